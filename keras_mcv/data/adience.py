"""The Adience faces (age groups, 8 classes) from the aligned faces and five fold files.

References: thesis sections 4.2 and 4.7; Eidinger, Enbar and Hassner, Age and Gender
Estimation of Unfiltered Faces, IEEE TIFS 2014.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np

from keras_mcv.data.arrays import ArrayData, DataError, _check_subset
from keras_mcv.data.image_folders import (
    _WARN_NAMES,
    _cache_file,
    _cached_decode,
    _FolderSource,
    _normalize_size,
)

# The eight Adience age groups, as closed intervals in years (class = index).
ADIENCE_AGE_GROUPS = ((0, 2), (4, 6), (8, 12), (15, 20), (25, 32), (38, 43), (48, 53), (60, 100))


ADIENCE_CLASS_NAMES = ["0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60-100"]


ADIENCE_NUM_FOLDS = 5


_ADIENCE_COLUMNS = ("user_id", "original_image", "face_id", "age")


_ADIENCE_FACE_PREFIXES = ("coarse_tilt_aligned_face", "landmark_aligned_face")


_RANGE = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")


_NUMBER = re.compile(r"\d+")


def adience_age_class(age: str):
    """The Adience age group (0..7) of an age string, or None if it has no usable age.

    Rule: "(a, b)" is the range a..b and "n" the single age n. The class is
    the group whose interval contains the midpoint (a + b) / 2; a midpoint in
    a gap between groups goes to the group at the smallest distance, the
    younger one on a tie. So "(38, 42)" and "(38, 48)" -> 38-43 (class 5),
    "(8, 23)" -> 15-20, "13" -> 8-12, "14" -> 15-20, "34" and "35" (a tie)
    -> 25-32, "36" -> 38-43, ages above 100 -> 60-100. "None", empty and
    anything else -> None.

    Args:
        age: the `age` field of an Adience fold file.

    References:
        Thesis section 4.2.3 (8 age classes); Levi & Hassner 2015 (folds).
    """
    text = age.strip()
    match = _RANGE.fullmatch(text)
    if match:
        low, high = sorted(int(g) for g in match.groups())
    elif _NUMBER.fullmatch(text):
        low = high = int(text)
    else:
        return None
    mid = (low + high) / 2
    distance = [max(lo - mid, 0.0, mid - hi) for lo, hi in ADIENCE_AGE_GROUPS]
    return int(np.argmin(distance))  # argmin takes the first: the younger on a tie


@dataclasses.dataclass(frozen=True)
class _FaceRow:
    user_id: str
    original_image: str
    face_id: str
    age: str


def _read_fold_file(path: Path) -> list[_FaceRow]:
    """Rows of one Adience `fold_<i>_data.txt` (tab-separated, with a header)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in _ADIENCE_COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"{path}, line 1: header lacks column(s) {missing}. Fix: the first line must be the "
                f"tab-separated Adience header 'user_id original_image face_id age gender x y dx dy "
                f"tilt_ang fiducial_yaw_angle fiducial_score' (re-download the fold file)."
            )
        index = [header.index(c) for c in _ADIENCE_COLUMNS]
        rows = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            fields = [row[i].strip() if i < len(row) else "" for i in index]
            if len(row) <= max(index) or not all(fields[:3]):
                raise DataError(
                    f"{path}, line {reader.line_num}: {len(row)} tab-separated field(s), missing "
                    f"user_id/original_image/face_id/age. Fix: repair or re-download the fold file."
                )
            rows.append(_FaceRow(*fields))
    return rows


def _check_subject_disjoint(folds, test_fold, root):
    """Raise if a subject (user_id) is in the test fold and a training fold."""
    test_users = {r.user_id for r in folds[test_fold]}
    train_users = {r.user_id for i, rows in enumerate(folds) if i != test_fold for r in rows}
    shared = sorted(test_users & train_users)
    if shared:
        raise DataError(
            f"{root}: user_id(s) {shared[:_WARN_NAMES]} appear in fold {test_fold} and in another "
            f"fold, so train and test would share subjects. Fix: use the original Adience fold files."
        )


def _face_member(root: Path, row: _FaceRow) -> str:
    """Path (relative to root) of a row's aligned face; the coarse-tilt version first."""
    names = [f"faces/{row.user_id}/{p}.{row.face_id}.{row.original_image}" for p in _ADIENCE_FACE_PREFIXES]
    for name in names:
        if (root / name).is_file():
            return name
    return names[0]  # absent: counted as skipped when read


def load_adience(root, fold: int = 0, image_size=64, subset=None, cache_dir=None) -> ArrayData:
    """Adience aligned faces for 8-class age prediction; fold `fold` is the test set.

    Expects `root/faces/<user_id>/coarse_tilt_aligned_face.<face_id>.<original_image>`
    (or `landmark_aligned_face.*`) and `root/fold_0_data.txt` ... `fold_4_data.txt`.
    The other four folds are the training set. Folds are subject-disjoint by
    construction; this is checked, and a user_id in both sets raises.

    Labels follow `adience_age_class`. Rows whose age is "None", empty or
    unparseable are left out; their count is `result.unlabeled` and one
    warning reports it. Face files that are missing or undecodable are left
    out too: `result.skipped`, one warning. Decoded arrays are cached like
    `load_image_folder`'s.

    Args:
        root: the Adience directory.
        fold: index 0..4 of the test fold. Defaults to 0.
        image_size: `(height, width)` or int to resize faces to.
            Defaults to 64.
        subset: keep only the first `subset` training faces, stratified by
            age group. Defaults to None (all).
        cache_dir: cache directory. Defaults to None (`default_cache_dir()`).

    Raises:
        DataError: `root`, `faces/` or a fold file is missing, a fold file is
            malformed (file and line named), or the folds share a subject.

    References:
        Thesis sections 4.2.3 and 4.7.
    """
    _check_subset(subset)
    root = Path(root).expanduser()
    if fold not in range(ADIENCE_NUM_FOLDS):
        raise ValueError(f"fold must be 0..{ADIENCE_NUM_FOLDS - 1}, got {fold!r}.")
    fold_files = [root / f"fold_{i}_data.txt" for i in range(ADIENCE_NUM_FOLDS)]
    needed = [root, root / "faces", *fold_files]
    absent = [str(p) for p in needed if not p.exists()]
    if absent:
        raise DataError(
            f"Adience data incomplete, missing: {', '.join(absent)}. Fix: pass the directory that "
            f"holds faces/<user_id>/ and fold_0_data.txt ... fold_4_data.txt."
        )
    folds = [_read_fold_file(f) for f in fold_files]
    _check_subject_disjoint(folds, fold, root)
    image_size = _normalize_size(image_size)

    train, test, unlabeled = _adience_items(root, folds, fold)
    members = sorted({m for m, _ in train + test} | {f.name for f in fold_files})
    existing = [m for m in members if (root / m).is_file()]
    source = _FolderSource(root)
    cache = _cache_file(
        cache_dir, root, source.fingerprint(existing),
        {"subset": subset, "image_size": image_size, "fold": fold, "kind": "adience", "members": len(members)},
    )
    data = _cached_decode(
        cache, source, root, "adience", ADIENCE_CLASS_NAMES, train, test, subset, image_size, unlabeled
    )
    if data.unlabeled:
        warnings.warn(
            f"{root}: left out {data.unlabeled} fold-file row(s) without a usable age "
            f"('None', empty or unparseable).",
            stacklevel=2,
        )
    return data


def _adience_items(root, folds, test_fold):
    """`(member, label)` items of the training folds and the test fold, and the unlabeled count."""
    split_rows = (
        [r for i, rows in enumerate(folds) if i != test_fold for r in rows],
        folds[test_fold],
    )
    splits, unlabeled = ([], []), 0
    for items, rows in zip(splits, split_rows):
        for row in rows:
            label = adience_age_class(row.age)
            if label is None:
                unlabeled += 1
            else:
                items.append((_face_member(root, row), label))
    return splits[0], splits[1], unlabeled
