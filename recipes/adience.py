"""The Adience recipe's loader: aligned faces and the five fold files, from a directory.

`--data` is the Adience directory (`faces/` and `fold_0_data.txt` ...
`fold_4_data.txt`); fold 0 is the test set, faces are resized to 64x64.
References: thesis 4.3, 4.7.
"""

from keras_mcv import data


def load(data_path=None, subset=None):
    if data_path is None:
        raise data.DataError(
            "adience_resnet50 needs the Adience directory: pass --data DIR holding "
            "faces/ and fold_0_data.txt ... fold_4_data.txt."
        )
    return data.load_adience(data_path, fold=0, image_size=64, subset=subset)
