"""Data loaders on small data each test makes in tmp_path (no downloads)."""

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_mcv import data as data_lib
from keras_mcv.data import image_folders
from keras_mcv.data import ArrayData, DataError

REAL_CIFAR10_ZIP = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.zip"

# Images are 5 high and 6 wide, so a swapped height/width shows up in shapes.
H, W = 5, 6


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test caches under its own tmp dir and ignores the user's CIFAR-10 setting."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KERAS_MCV_CACHE", str(cache))
    monkeypatch.delenv("KERAS_MCV_CIFAR10", raising=False)
    return cache


def pixel(class_index, i):
    """A solid colour that encodes (class, file index); exact in PNG."""
    return (10 + 40 * class_index, 10 + 10 * i, 99)


def encode(color, fmt, size=(W, H)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


# Files of one class, sorted by name: PNG and JPEG, upper-case extensions too.
FILE_NAMES = ["f0.png", "f1.jpg", "f2.PNG", "f3.jpeg", "f4.png"]
CLASSES = ["bird", "cat", "dog"]  # sorted: labels 0, 1, 2


def image_tree(n_train=5, n_test=2, corrupt=True):
    """{relative path: bytes} of a train/ + test/ tree; cat's first train file is corrupt."""
    files = {}
    for c, name in enumerate(CLASSES):
        for i, fname in enumerate(FILE_NAMES[:n_train]):
            fmt = "PNG" if fname.lower().endswith("png") else "JPEG"
            files[f"train/{name}/{fname}"] = encode(pixel(c, i), fmt)
        for i in range(n_test):
            files[f"test/{name}/t{i}.png"] = encode(pixel(c, i), "PNG")
    if corrupt:
        files["train/cat/a_corrupt.jpg"] = b"\xff\xd8 this is not a jpeg"
    files["train/cat/notes.txt"] = b"not an image, ignored"
    files["train/dog/.DS_Store"] = b"hidden, ignored"
    return files


def write_folder(root, files):
    for rel, blob in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
    return root


def write_zip(path, files, top=""):
    with zipfile.ZipFile(path, "w") as z:
        for rel, blob in files.items():
            z.writestr(top + rel, blob)
    return path


def class_of(images):
    """Recover (class, file index) from the solid colours written by `pixel`."""
    r = images[:, 0, 0, 0].astype(int)
    g = images[:, 0, 0, 1].astype(int)
    return np.round((r - 10) / 40).astype(int), np.round((g - 10) / 10).astype(int)


def forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(image_folders, "_decode_image", fail)


# ---------------------------------------------------------------- image folders


def test_image_folder_directory(tmp_path):
    root = write_folder(tmp_path / "imgs", image_tree())
    with pytest.warns(UserWarning, match=r"skipped 1 .*train/cat/a_corrupt\.jpg"):
        d = data_lib.load_image_folder(root)
    assert isinstance(d, ArrayData)
    assert d.class_names == CLASSES
    assert d.skipped == 1
    assert d.x_train.shape == (15, H, W, 3) and d.x_train.dtype == np.uint8
    assert d.x_test.shape == (6, H, W, 3)
    assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
    # Labels match the colours written for each class (PNG and JPEG alike).
    cls, idx = class_of(d.x_train)
    np.testing.assert_array_equal(cls, d.y_train)
    # Round-robin over classes in file order: f0 of bird, cat, dog, then f1, ...
    np.testing.assert_array_equal(d.y_train, np.tile([0, 1, 2], 5))
    np.testing.assert_array_equal(idx, np.repeat(np.arange(5), 3))
    png = d.x_train[0]  # bird f0.png is lossless
    np.testing.assert_array_equal(png, np.broadcast_to(pixel(0, 0), (H, W, 3)))


def test_image_folder_zip_with_top_folder_matches_directory(tmp_path):
    files = image_tree()
    with pytest.warns(UserWarning, match="skipped 1"):
        from_dir = data_lib.load_image_folder(write_folder(tmp_path / "imgs", files))
    archive = write_zip(tmp_path / "imgs.zip", files, top="imgs/")
    with pytest.warns(UserWarning, match="skipped 1"):
        from_zip = data_lib.load_image_folder(archive)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(from_zip, field), getattr(from_dir, field))
    assert from_zip.class_names == CLASSES and from_zip.skipped == 1
    assert from_zip.name == "imgs"


def test_zip_without_top_folder(tmp_path):
    archive = write_zip(tmp_path / "flat.zip", image_tree(corrupt=False))
    d = data_lib.load_image_folder(archive)
    assert d.x_train.shape[0] == 15 and d.skipped == 0


def test_subset_is_stratified_first_files_and_replaces_corrupt(tmp_path):
    root = write_folder(tmp_path / "imgs", image_tree())
    with pytest.warns(UserWarning, match="skipped 1"):
        d = data_lib.load_image_folder(root, subset=7)
    # 7 over 3 classes: 3, 2, 2 (the remainder goes to the first classes).
    np.testing.assert_array_equal(np.bincount(d.y_train), [3, 2, 2])
    cls, idx = class_of(d.x_train)
    # The first files of each class; cat's corrupt first file is replaced by the next.
    assert sorted(zip(cls.tolist(), idx.tolist())) == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1),
    ]
    assert d.x_test.shape[0] == 6  # the test split is never subset


def test_subset_validation(tmp_path):
    root = write_folder(tmp_path / "imgs", image_tree(corrupt=False))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="subset"):
            data_lib.load_image_folder(root, subset=bad)


def test_cache_hit_does_not_decode(tmp_path, monkeypatch, isolated_cache):
    archive = write_zip(tmp_path / "imgs.zip", image_tree())
    with pytest.warns(UserWarning):
        first = data_lib.load_image_folder(archive, subset=6)
    cached = list(isolated_cache.iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"  # no leftover temp file
    forbid_decoding(monkeypatch)
    with pytest.warns(UserWarning, match="skipped 1"):  # the count survives the cache
        second = data_lib.load_image_folder(archive, subset=6)
    np.testing.assert_array_equal(second.x_train, first.x_train)
    np.testing.assert_array_equal(second.y_test, first.y_test)
    assert second.class_names == CLASSES and second.skipped == 1
    # Another subset, or a changed source, is another cache key: it decodes.
    with pytest.raises(AssertionError, match="decoded"):
        data_lib.load_image_folder(archive, subset=3)
    write_zip(archive, {**image_tree(), "train/bird/f9.png": encode((1, 2, 3), "PNG")})
    with pytest.raises(AssertionError, match="decoded"):
        data_lib.load_image_folder(archive, subset=6)


def test_directory_cache_notices_changed_files(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "imgs", image_tree(corrupt=False))
    data_lib.load_image_folder(root)
    forbid_decoding(monkeypatch)
    data_lib.load_image_folder(root)  # hit
    (root / "train/bird/f0.png").write_bytes(encode((0, 0, 0), "PNG", size=(W + 1, H)))
    with pytest.raises(AssertionError, match="decoded"):
        data_lib.load_image_folder(root)


def test_cache_dir_argument_and_damaged_cache(tmp_path, isolated_cache):
    root = write_folder(tmp_path / "imgs", image_tree(corrupt=False))
    mine = tmp_path / "mine"
    first = data_lib.load_image_folder(root, cache_dir=mine)
    (entry,) = mine.iterdir()
    assert not isolated_cache.exists()
    entry.write_bytes(b"truncated")  # a damaged entry is decoded again, then rewritten
    again = data_lib.load_image_folder(root, cache_dir=mine)
    np.testing.assert_array_equal(again.x_train, first.x_train)
    assert np.load(entry)["x_train"].shape == first.x_train.shape


def test_image_size_resizes_and_mixed_sizes_need_it(tmp_path):
    files = image_tree(corrupt=False)
    files["train/dog/f0.png"] = encode(pixel(2, 0), "PNG", size=(9, 7))
    root = write_folder(tmp_path / "imgs", files)
    with pytest.raises(DataError, match="image_size"):
        data_lib.load_image_folder(root)
    d = data_lib.load_image_folder(root, image_size=(4, 3))
    assert d.x_train.shape == (15, 4, 3, 3) and d.x_test.shape == (6, 4, 3, 3)
    assert data_lib.load_image_folder(root, image_size=8).x_train.shape[1:] == (8, 8, 3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "garbage.zip").write_bytes(b"PK? not a zip") and p / "garbage.zip", "not a readable zip"),
        (lambda p: write_folder(p / "flat", {"images/cat/a.png": encode((1, 1, 1), "PNG")}), "no train/"),
        (lambda p: write_zip(p / "nt.zip", {"cat/a.png": encode((1, 1, 1), "PNG")}), "no train/"),
        (lambda p: write_folder(p / "nt", {"train/cat/a.png": encode((1, 1, 1), "PNG")}), "no test/"),
        (
            lambda p: write_folder(
                p / "cls",
                {"train/cat/a.png": encode((1, 1, 1), "PNG"), "test/cow/a.png": encode((1, 1, 1), "PNG")},
            ),
            "train/ lacks",
        ),
    ],
)
def test_data_errors_before_decoding(tmp_path, monkeypatch, make, match):
    path = make(tmp_path)
    forbid_decoding(monkeypatch)
    with pytest.raises(DataError, match=match) as info:
        data_lib.load_image_folder(path)
    assert str(path) in str(info.value) and "Fix" in str(info.value)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- tfds


def test_load_tfds_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        d = data_lib.load_tfds("cifar10", data_dir=str(tmp_path), download=False)
        svhn = data_lib.load_svhn(data_path=str(tmp_path), subset=4)
    assert d.x_train.shape == (6, 32, 32, 3) and d.x_train.dtype == np.uint8
    assert d.x_test.shape == (6, 32, 32, 3)
    assert d.y_train.dtype == np.int64 and d.num_classes == 10 and d.name == "cifar10"
    assert svhn.name == "svhn" and svhn.num_classes == 10
    assert svhn.x_train.shape[0] <= 4 and svhn.x_test.shape[0] == 6


def test_load_tfds_not_prepared_raises(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match="download=True"):
        data_lib.load_tfds("cifar10", data_dir=str(tmp_path), download=False)
    with pytest.raises(DataError, match="not a tfds dataset"):
        data_lib.load_tfds("no_such_dataset_xyz", data_dir=str(tmp_path))


# ---------------------------------------------------------------- CIFAR-10 sources


def test_load_cifar10_from_path_and_env(tmp_path, monkeypatch):
    archive = write_zip(tmp_path / "c.zip", image_tree(corrupt=False))
    d = data_lib.load_cifar10(archive, subset=3)
    assert d.name == "cifar10" and np.bincount(d.y_train).tolist() == [1, 1, 1]
    monkeypatch.setenv("KERAS_MCV_CIFAR10", str(archive))
    assert data_lib.load_cifar10().x_train.shape[0] == 15
    monkeypatch.setenv("KERAS_MCV_CIFAR10", str(tmp_path / "gone.zip"))
    with pytest.raises(DataError, match="gone.zip"):
        data_lib.load_cifar10()


def test_load_cifar10_falls_back_to_tfds(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data_lib, "_default_cifar10_path", lambda: None)
    with tfds.testing.mock_data(num_examples=5):
        d = data_lib.load_cifar10(subset=3)
    assert d.name == "cifar10" and d.x_train.shape[1:] == (32, 32, 3)
    assert d.x_train.shape[0] <= 3 and d.x_test.shape[0] == 5


def test_real_cifar10_zip_subset():
    if not REAL_CIFAR10_ZIP.exists():
        pytest.skip(f"real CIFAR-10 zip not found at {REAL_CIFAR10_ZIP} (shared/ beside the repo)")
    d = data_lib.load_cifar10(REAL_CIFAR10_ZIP, subset=100)
    assert d.x_train.shape == (100, 32, 32, 3) and d.x_test.shape == (10000, 32, 32, 3)
    assert d.class_names == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ]
    np.testing.assert_array_equal(np.bincount(d.y_train), [10] * 10)
    np.testing.assert_array_equal(np.bincount(d.y_test), [1000] * 10)
    assert d.skipped == 0


# ---------------------------------------------------------------- helpers


def test_class_quotas_and_stratified_first():
    assert data_lib.class_quotas(3, 7) == [3, 2, 2]
    y = np.array([2, 0, 0, 1, 2, 0, 1, 2, 2])
    # Quotas 2, 2, 1: class 0 -> 1, 2; class 1 -> 3, 6; class 2 -> 0.
    np.testing.assert_array_equal(data_lib.stratified_first(y, 5, 3), [0, 1, 2, 3, 6])
    # Class 1 has only 2 examples: it gives what it has.
    np.testing.assert_array_equal(data_lib.stratified_first(y, 9, 3), [0, 1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(data_lib.interleave_classes(np.array([1, 1, 0, 0, 2])), [2, 0, 4, 3, 1])


def test_normalize_uint8():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 4, 4, 3), dtype=np.uint8)
    d = ArrayData(x, np.zeros(20, "int64"), x[:5], np.zeros(5, "int64"), ["a"], "t")
    n = data_lib.normalize(d)
    assert n.x_train.dtype == np.float32 and n.x_test.dtype == np.float32
    np.testing.assert_allclose(n.x_train.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(n.x_train.std(axis=(0, 1, 2)), 1, atol=1e-4)
    mean = x.reshape(-1, 3).astype("float64").mean(0)
    std = x.reshape(-1, 3).astype("float64").std(0)
    np.testing.assert_allclose(n.x_test, (x[:5] - mean) / std, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- Adience

ADIENCE_HEADER = (
    "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\t"
    "fiducial_yaw_angle\tfiducial_score"
)

# (user_id, face_id, age, landmark-only file) per fold; users never repeat across folds.
ADIENCE_ROWS = [
    [("u0", 1, "(0, 2)", False), ("u0", 2, "(25, 32)", False), ("u0b", 3, "None", False)],
    [("u1", 4, "(4, 6)", False), ("u1", 5, "35", True), ("u1", 6, "", False)],
    [("u2", 7, "(8, 12)", False), ("u2", 8, "(38, 48)", False)],
    [("u3", 9, "(60, 100)", False), ("u3", 10, "13", False), ("u3", 11, "(48, 53)", False)],
    [("u4", 12, "(15, 20)", False), ("u4", 13, "(25, 32)", False), ("u4", 14, "(8, 23)", False)],
]


def write_adience(root, rows=ADIENCE_ROWS, skip_image=None):
    for k, fold in enumerate(rows):
        lines = [ADIENCE_HEADER]
        for user, face, age, landmark in fold:
            image = f"img{face}.jpg"
            lines.append(f"{user}\t{image}\t{face}\t{age}\tf\t0\t0\t10\t10\t0\t0\t50")
            prefix = "landmark_aligned_face" if landmark else "coarse_tilt_aligned_face"
            target = root / "faces" / user / f"{prefix}.{face}.{image}"
            target.parent.mkdir(parents=True, exist_ok=True)
            if face != skip_image:
                size = (20, 20) if face % 2 else (24, 18)  # mixed sizes, as in Adience
                target.write_bytes(encode((face * 10, 0, 0), "JPEG", size=size))
        (root / f"fold_{k}_data.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize(
    "age, expected",
    [
        ("(0, 2)", 0), ("(4, 6)", 1), ("(8, 12)", 2), ("(15, 20)", 3), ("(25, 32)", 4),
        ("(38, 43)", 5), ("(48, 53)", 6), ("(60, 100)", 7),
        ("(38, 42)", 5), ("(38, 48)", 5), ("(27, 32)", 4), ("(8, 23)", 3),
        ("13", 2), ("14", 3), ("22", 3), ("23", 4), ("35", 4), ("36", 5), ("34", 4), ("57", 7), ("3", 0),
        ("101", 7), (" (25,32) ", 4),
        ("None", None), ("", None), ("abc", None), ("(1, 2, 3)", None), ("-5", None),
    ],
)
def test_adience_age_class(age, expected):
    assert data_lib.adience_age_class(age) == expected


def test_load_adience_folds_labels_and_unlabeled(tmp_path):
    root = write_adience(tmp_path / "adience")
    with pytest.warns(UserWarning, match="2 fold-file row"):
        d = data_lib.load_adience(root, fold=0, image_size=8)
    assert d.unlabeled == 2 and d.skipped == 0 and d.num_classes == 8
    assert d.x_train.shape == (10, 8, 8, 3) and d.x_train.dtype == np.uint8
    # Test = fold 0's labeled rows: "(0, 2)" -> 0 and "(25, 32)" -> 4.
    assert sorted(d.y_test.tolist()) == [0, 4]
    # Train = folds 1-4 minus fold 1's empty age: 1, 4 ("35": tie 25-32/38-43, the
    # younger wins), 2, 5 ("(38, 48)"), 7, 2 ("13"), 6, 3, 4, 3 ("(8, 23)").
    np.testing.assert_array_equal(np.bincount(d.y_train, minlength=8), [0, 1, 2, 2, 2, 1, 1, 1])
    # Fold 1's "35" face exists only as landmark_aligned_face and was still found.
    assert d.name == "adience" and d.class_names[5] == "38-43"


def test_load_adience_other_fold_subset_and_missing_face(tmp_path):
    root = write_adience(tmp_path / "adience", skip_image=9)
    with pytest.warns(UserWarning) as record:
        d = data_lib.load_adience(root, fold=3, image_size=(6, 4), subset=4)
    messages = " ".join(str(w.message) for w in record)
    assert "skipped 1" in messages and "face.9.img9.jpg" in messages
    assert d.skipped == 1 and d.x_test.shape == (2, 6, 4, 3)  # fold 3 minus its missing face
    assert sorted(d.y_test.tolist()) == [2, 6]
    # subset=4 over 8 classes: quota 1 for classes 0-3, present are 0, 1, 2, 3.
    np.testing.assert_array_equal(np.sort(d.y_train), [0, 1, 2, 3])


def test_load_adience_rejects_shared_subject(tmp_path):
    rows = [list(fold) for fold in ADIENCE_ROWS]
    rows[2] = rows[2] + [("u0", 99, "(4, 6)", False)]  # u0 is also in fold 0
    root = write_adience(tmp_path / "adience", rows)
    with pytest.raises(DataError, match=r"\['u0'\]"):
        data_lib.load_adience(root, fold=0)
    # With fold 1 as test, u0 is in training folds only: fine.
    with pytest.warns(UserWarning):
        assert data_lib.load_adience(root, fold=1, image_size=8).x_test.shape[0] == 2


def test_load_adience_malformed_fold_files(tmp_path, monkeypatch):
    root = write_adience(tmp_path / "adience")
    forbid_decoding(monkeypatch)
    bad = root / "fold_2_data.txt"
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1], "u2\timg8.jpg"]) + "\n")
    with pytest.raises(DataError, match=r"fold_2_data\.txt, line 3"):
        data_lib.load_adience(root)
    bad.write_text("user_id\toriginal_image\tage\n" + "u2\timg.jpg\t(8, 12)\n")
    with pytest.raises(DataError, match=r"fold_2_data\.txt, line 1: header lacks column\(s\) \['face_id'\]"):
        data_lib.load_adience(root)
    os.remove(root / "fold_4_data.txt")
    with pytest.raises(DataError, match="fold_4_data.txt"):
        data_lib.load_adience(root)
    with pytest.raises(DataError, match="missing"):
        data_lib.load_adience(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="fold"):
        data_lib.load_adience(root, fold=5)


# ---------------------------------------------------------------- make_dataset


def small_images(n=6):
    rng = np.random.default_rng(1)
    return rng.integers(1, 256, size=(n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 3


def test_make_dataset_shapes_and_identity():
    x, y = small_images(5)
    batches = list(data_lib.make_dataset(x, y, batch_size=2).as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(2, 8, 8, 3), (2, 8, 8, 3), (1, 8, 8, 3)]
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x.astype("float32"))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)


def test_make_dataset_shuffle_is_a_seeded_permutation():
    x, y = small_images(6)
    ds = data_lib.make_dataset(x, y, batch_size=6, shuffle=True, seed=3)
    (xb, yb), = ds.as_numpy_iterator()
    order = [int(np.flatnonzero((x == xi).all(axis=(1, 2, 3)))[0]) for xi in xb.astype(np.uint8)]
    assert sorted(order) == list(range(6))
    np.testing.assert_array_equal(yb, y[order])
    (xb2, _), = data_lib.make_dataset(x, y, batch_size=6, shuffle=True, seed=3).as_numpy_iterator()
    np.testing.assert_array_equal(xb, xb2)


def translations(image, pad=4):
    """Every flip + pad-and-crop of `image` (zero padding)."""
    h, w, _ = image.shape
    out = []
    for im in (image, image[:, ::-1]):
        padded = np.pad(im, ((pad, pad), (pad, pad), (0, 0)))
        out += [padded[i:i + h, j:j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    return out


def test_make_dataset_augment_is_flip_and_translate():
    x, y = small_images(6)
    geometric = ("flip", "translate")
    ds = data_lib.make_dataset(x, y, batch_size=3, augment=geometric, seed=7)
    first = np.concatenate([b[0] for b in ds.as_numpy_iterator()])
    again = np.concatenate([b[0] for b in data_lib.make_dataset(x, y, 3, augment=geometric, seed=7).as_numpy_iterator()])
    np.testing.assert_array_equal(first, again)  # seeded: reproducible
    second_epoch = np.concatenate([b[0] for b in ds.as_numpy_iterator()])
    assert not np.array_equal(first, second_epoch)  # each epoch draws new transforms
    changed = 0
    for original, augmented in zip(x.astype("float32"), first):
        assert any(np.array_equal(augmented, t) for t in translations(original))
        changed += not np.array_equal(augmented, original)
    assert changed > 0  # 162 possible outcomes each: not all six are the identity
    with pytest.raises(ValueError, match="images"):
        data_lib.make_dataset(np.zeros((4, 3)), np.zeros(4), 2, augment=True)


def test_make_dataset_jitter_is_brightness_and_contrast_within_the_factors():
    # Brightness adds d to an image, contrast scales it about its per-channel
    # mean by c: aug = c * (x - mean(x)) + mean(x) + d, clipped to the data's range.
    rng = np.random.default_rng(2)
    x = rng.uniform(-1.0, 1.0, size=(8, 6, 6, 3)).astype("float32")
    x[0, 0, 0, 0], x[0, 0, 1, 0] = -3.0, 3.0  # the range, far from the other pixels
    y = np.zeros(8, dtype="int64")
    (aug, _), = data_lib.make_dataset(x, y, batch_size=8, augment=("jitter",), seed=5).as_numpy_iterator()
    width = 6.0
    for original, out in zip(x[1:], aug[1:]):  # images whose pixels never reach the clip
        mean = original.mean(axis=(0, 1))
        centred = (original - mean).ravel()
        c = float(np.dot((out - mean).ravel() - (out - mean).mean(), centred - centred.mean())
                  / np.dot(centred - centred.mean(), centred - centred.mean()))
        d = float((out - mean - c * (original - mean)).mean())
        np.testing.assert_allclose(out, c * (original - mean) + mean + d, atol=1e-5)
        assert 0.9 - 1e-6 <= c <= 1.1 + 1e-6
        assert abs(d) <= data_lib.AUGMENT_JITTER * width + 1e-6
        assert not (c == 1.0 and d == 0.0)


def test_augment_names_are_checked():
    from keras_mcv.data.arrays import check_transforms

    assert check_transforms(True) == ("flip", "translate", "jitter")
    assert check_transforms(False) == () and check_transforms(None) == ()
    assert check_transforms("flip") == ("flip",)
    with pytest.raises(ValueError, match="rotate"):
        check_transforms(("flip", "rotate"))
