"""Data loaders that all end in the same place: an `ArrayData` of NumPy arrays.

Every loader returns uint8 (images, NHWC) or float32 (features) arrays plus
int64 labels, so that the macro cross-validation baseline can make stratified
splits with scikit-learn and every method sees exactly the same examples.
`make_dataset` turns arrays into a `tf.data` pipeline with optional
augmentation; `normalize` standardises per channel with training statistics.

Sources: scikit-learn's bundled digits, TensorFlow Datasets (`cifar10`,
`svhn_cropped`), image folders or zips in the `train/<class>/`, `test/<class>/`
layout (the CIFAR-10 JPEG copy), and the Adience aligned faces with their five
fold files. Decoded image folders are cached as `.npz` outside the repository.

References: thesis section 4.2 (datasets).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# The eight Adience age groups, as closed intervals in years (class = index).
ADIENCE_AGE_GROUPS = ((0, 2), (4, 6), (8, 12), (15, 20), (25, 32), (38, 43), (48, 53), (60, 100))
ADIENCE_CLASS_NAMES = ["0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60-100"]
ADIENCE_NUM_FOLDS = 5
_ADIENCE_COLUMNS = ("user_id", "original_image", "face_id", "age")
_ADIENCE_FACE_PREFIXES = ("coarse_tilt_aligned_face", "landmark_aligned_face")

# Bump when the cached arrays' meaning changes, so old cache files are ignored.
_CACHE_VERSION = 1
# How many skipped file names a warning quotes.
_WARN_NAMES = 5


class DataError(ValueError):
    """Data that cannot be loaded as asked; the message names the path and the fix."""


@dataclasses.dataclass
class ArrayData:
    """Train and test arrays of one dataset.

    Attributes:
        x_train: training inputs, `(n, ...)`; images are `(n, h, w, c)` uint8.
        y_train: integer class labels `(n,)`, int64.
        x_test: test inputs.
        y_test: test labels.
        class_names: one name per class; its length is the number of classes.
        name: a short name of the dataset, used in run records.
        skipped: image files that were listed but could not be read or
            decoded and were left out. Defaults to 0.
        unlabeled: examples left out because they carry no usable label
            (Adience rows with age "None"). Defaults to 0.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list
    name: str
    skipped: int = 0
    unlabeled: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])


# --------------------------------------------------------------------------- digits


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ArrayData:
    """scikit-learn's bundled 8x8 digits as `(n, 8, 8, 1)` images in 0..16.

    The split is stratified and fixed by `seed`, so every method sees the same
    test set.

    Args:
        test_fraction: share of the 1,797 images kept for testing.
            Defaults to 0.2.
        seed: seed of the stratified split. Defaults to 0.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    x = digits.images.astype("float32")[..., None]
    y = digits.target.astype("int64")
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return ArrayData(x_tr, y_tr, x_te, y_te, [str(i) for i in range(10)], "digits")


# --------------------------------------------------------------------------- subsets


def _check_subset(subset):
    if subset is not None and (isinstance(subset, bool) or int(subset) != subset or subset < 1):
        raise ValueError(f"subset must be a positive integer or None, got {subset!r}.")


def class_quotas(num_classes: int, n: int) -> list[int]:
    """How many of `n` examples each class gets: equal shares, the remainder to the first classes.

    Args:
        num_classes: number of classes.
        n: total examples wanted.
    """
    share, extra = divmod(n, num_classes)
    return [share + (1 if c < extra else 0) for c in range(num_classes)]


def stratified_first(y: np.ndarray, n: int, num_classes: int | None = None) -> np.ndarray:
    """Indices of the first examples of each class, `class_quotas(num_classes, n)` of them.

    Deterministic (no shuffling: the source order decides) and in the original
    order. A class with fewer examples than its quota gives all it has, so the
    result may hold fewer than `n` indices.

    Args:
        y: integer labels.
        n: total examples wanted.
        num_classes: number of classes. Defaults to `max(y) + 1`.
    """
    y = np.asarray(y)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    keep = [np.flatnonzero(y == c)[:q] for c, q in enumerate(class_quotas(num_classes, n))]
    return np.sort(np.concatenate(keep))


def _apply_subset(data: ArrayData, subset) -> ArrayData:
    """`data` with only the first `subset` training examples, stratified."""
    _check_subset(subset)
    if subset is None:
        return data
    idx = stratified_first(data.y_train, subset, data.num_classes)
    return dataclasses.replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx])


# --------------------------------------------------------------------------- tfds


def _tfds_to_numpy(ds, name, split):
    """All (image, label) pairs of a supervised tf.data split as two arrays."""
    import tensorflow_datasets as tfds

    batches = list(tfds.as_numpy(ds.batch(4096)))
    if not batches:
        raise DataError(f"tfds dataset {name!r} split {split!r} is empty.")
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches]).astype("int64")
    return x, y


def load_tfds(name: str, data_dir=None, download: bool = False, split=("train", "test")) -> ArrayData:
    """A TensorFlow Datasets image classification set (`cifar10`, `svhn_cropped`) as arrays.

    Reads with `tfds.load(name, split=..., as_supervised=True)` and converts
    with `tfds.as_numpy`. Batches of 4,096 are concatenated rather than
    asking for `batch_size=-1`: tfds sizes that single batch from the split
    metadata and falls back to `sys.maxsize` when it is missing, which aborts
    the process (as under `tfds.testing.mock_data`).

    Args:
        name: tfds name, e.g. `"cifar10"` or `"svhn_cropped"`.
        data_dir: tfds data directory. Defaults to None (tfds's own default,
            `~/tensorflow_datasets`).
        download: let tfds download and prepare the data when missing.
            Defaults to False, so an offline machine fails fast with a
            `DataError` instead of trying the network.
        split: the (train, test) split names. Defaults to `("train", "test")`.

    Raises:
        DataError: the dataset is unknown or not prepared in `data_dir`.

    References:
        Thesis sections 4.2.1 (CIFAR-10) and 4.2.2 (SVHN).
    """
    import tensorflow_datasets as tfds

    if len(split) != 2:
        raise ValueError(f"split must be (train, test), got {split!r}.")
    where = data_dir or "tfds's default data_dir (~/tensorflow_datasets)"
    try:
        (train, test), info = tfds.load(
            name,
            split=list(split),
            data_dir=data_dir,
            download=download,
            as_supervised=True,
            with_info=True,
        )
    except AssertionError as err:  # tfds's "could not find data in <dir>"
        raise DataError(
            f"tfds dataset {name!r} is not prepared in {where}. Fix: run once with "
            f"download=True on a machine with internet (or `tfds build {name}`), or pass "
            f"data_dir= pointing at a prepared copy. ({err})"
        ) from err
    except tfds.core.DatasetNotFoundError as err:
        raise DataError(f"{name!r} is not a tfds dataset name; use e.g. 'cifar10' or 'svhn_cropped'.") from err
    x_train, y_train = _tfds_to_numpy(train, name, split[0])
    x_test, y_test = _tfds_to_numpy(test, name, split[1])
    class_names = list(info.features[info.supervised_keys[1]].names)
    return ArrayData(x_train, y_train, x_test, y_test, class_names, name)


# --------------------------------------------------------------------------- image sources


class _FolderSource:
    """Files under a directory, addressed by POSIX paths relative to it."""

    def __init__(self, root: Path):
        self.root = root

    def members(self) -> list[str]:
        found = []
        for dirpath, _, filenames in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root)
            found.extend((rel / f).as_posix() for f in filenames)
        return sorted(found)

    def read(self, member: str) -> bytes:
        return (self.root / member).read_bytes()

    def fingerprint(self, members) -> dict:
        # A directory's own mtime misses edits inside class folders, so the
        # cache key summarises every listed file instead.
        stats = [(self.root / m).stat() for m in members]
        return {
            "files": len(stats),
            "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
        }

    def close(self):
        pass


class _ZipSource:
    """Members of a zip archive, read without extracting it."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise DataError(
                f"{path} is not a readable zip archive ({err}). Fix: pass a directory or a "
                f"valid .zip holding train/<class>/<image> and test/<class>/<image>."
            ) from err

    def members(self) -> list[str]:
        return sorted(i.filename for i in self.zip.infolist() if not i.is_dir())

    def read(self, member: str) -> bytes:
        return self.zip.read(member)

    def fingerprint(self, members) -> dict:
        stat = self.path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def close(self):
        self.zip.close()


def _open_source(path: Path):
    """A directory or zip source for `path`; `DataError` if it is neither."""
    if not path.exists():
        raise DataError(
            f"{path} does not exist. Fix: pass the path of an image folder or .zip with "
            f"train/<class>/ and test/<class>/ subfolders."
        )
    if path.is_dir():
        return _FolderSource(path)
    return _ZipSource(path)


def _is_image(member: str) -> bool:
    parts = member.split("/")
    # Skip macOS metadata ("__MACOSX/", "._x.jpg") and other hidden files.
    if any(p.startswith((".", "__MACOSX")) for p in parts):
        return False
    return member.lower().endswith(IMAGE_EXTENSIONS)


def _find_layout(members, path):
    """The folder prefix holding `train/` and the (member, class) pairs of both splits.

    The prefix is "" for `train/...` at the top, or e.g. "cifar10/" when the
    archive wraps everything in one folder; the shallowest `train/` wins.
    """
    images = [m for m in members if _is_image(m)]
    prefixes = set()
    for m in images:
        parts = m.split("/")
        if len(parts) >= 3 and parts[-3] == "train":
            prefixes.add("/".join(parts[:-3]))
    if not prefixes:
        raise DataError(
            f"{path} has no train/<class>/<image> files ({', '.join(IMAGE_EXTENSIONS)}). "
            f"Fix: point at the folder (or zip) that contains train/ and test/, each with "
            f"one subfolder per class."
        )
    prefix = min(prefixes, key=lambda p: (p.count("/") + bool(p), p))
    prefix = prefix + "/" if prefix else ""
    splits = {"train": [], "test": []}
    for m in images:
        if not m.startswith(prefix):
            continue
        parts = m[len(prefix):].split("/")
        if len(parts) == 3 and parts[0] in splits:
            splits[parts[0]].append((m, parts[1]))
    if not splits["test"]:
        raise DataError(
            f"{path} has train/ but no test/<class>/<image> files under {prefix or 'its top level'}. "
            f"Fix: add a test/ folder with the same class subfolders as train/."
        )
    return prefix, splits["train"], splits["test"]


def _decode_image(data: bytes, image_size=None) -> np.ndarray:
    """Decode PNG/JPEG bytes to an `(h, w, 3)` uint8 RGB array, resized if asked.

    Args:
        data: encoded image bytes.
        image_size: `(height, width)` to resize to, or None to keep the size.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image_size is not None:
            size = (image_size[1], image_size[0])
            # JPEG can decode at 1/2, 1/4, 1/8 scale directly: much faster for big faces.
            image.draft("RGB", size)
            image = image.convert("RGB").resize(size, Image.BILINEAR)
        else:
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)


def _undecodable_errors():
    from PIL import Image

    # UnidentifiedImageError and truncated files are OSErrors; some malformed
    # headers surface as ValueError or SyntaxError inside PIL's parsers.
    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _decode_items(source, items, num_classes, quota, image_size, path):
    """Decode `(member, label)` items class by class, up to `quota[c]` per class.

    A file that fails to read or decode is skipped and the next file of the
    same class takes its place, so a subset keeps its exact per-class counts
    whenever the class has enough good files.

    Returns:
        `(x, y, skipped_members)`, ordered by `interleave_classes`: the first
        file of every class, then the second of every class, and so on.
    """
    errors = _undecodable_errors()
    by_class = [[m for m, label in items if label == c] for c in range(num_classes)]
    images, labels, skipped = [], [], []
    shape = None
    for c, members in enumerate(by_class):
        taken = 0
        for member in members:
            if taken >= quota[c]:
                break
            try:
                image = _decode_image(source.read(member), image_size)
            except errors:
                skipped.append(member)
                continue
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise DataError(
                    f"{path}: {member} is {image.shape[1]}x{image.shape[0]} but earlier images are "
                    f"{shape[1]}x{shape[0]}. Fix: pass image_size=(height, width) to resize all."
                )
            images.append(image)
            labels.append(c)
            taken += 1
    if not images:
        raise DataError(f"{path}: none of the {len(items)} listed images could be decoded.")
    y = np.asarray(labels, dtype="int64")
    order = interleave_classes(y)
    return np.stack(images)[order], y[order], skipped


def interleave_classes(y: np.ndarray) -> np.ndarray:
    """The order that deals examples round-robin over classes, each class keeping its order.

    With it, any prefix of the data is as stratified as it can be: the first
    k * num_classes examples hold k of every class (while the classes last).
    """
    y = np.asarray(y)
    rank = np.empty(len(y), dtype="int64")
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rank[members] = np.arange(len(members))
    return np.lexsort((y, rank))


def _warn_skipped(path, count, names, what="undecodable or missing image file(s)"):
    if count:
        shown = ", ".join(names[:_WARN_NAMES]) + (", ..." if count > _WARN_NAMES else "")
        warnings.warn(f"{path}: skipped {count} {what}: {shown}", stacklevel=4)


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """Where decoded arrays are cached: `$KERAS_MCV_CACHE`, else `~/.cache/keras_mcv`."""
    return Path(os.environ.get("KERAS_MCV_CACHE") or Path.home() / ".cache" / "keras_mcv")


def _cache_file(cache_dir, path: Path, fingerprint: dict, params: dict) -> Path:
    key = {"version": _CACHE_VERSION, "source": str(path.resolve()), **fingerprint, **params}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / f"{path.stem}-{digest}.npz"


def _read_cache(file: Path):
    """The arrays stored in `file`, or None if it is absent or unreadable."""
    if not file.exists():
        return None
    try:
        with np.load(file, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        # A damaged cache entry is only a lost shortcut: decode again.
        return None


def _write_cache(file: Path, arrays: dict) -> None:
    """Save `arrays` to `file` atomically: a reader sees the old file or the whole new one."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, file)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:
        warnings.warn(f"could not write the data cache {file}: {err}; continuing uncached.", stacklevel=4)


def _to_cache(data: ArrayData, skipped_names) -> dict:
    return {
        "x_train": data.x_train, "y_train": data.y_train,
        "x_test": data.x_test, "y_test": data.y_test,
        "class_names": np.asarray(data.class_names, dtype=str),
        "skipped": np.asarray(data.skipped), "unlabeled": np.asarray(data.unlabeled),
        "skipped_names": np.asarray(list(skipped_names[:_WARN_NAMES]) or [""], dtype=str),
    }


def _from_cache(arrays: dict, name: str):
    data = ArrayData(
        arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
        [str(c) for c in arrays["class_names"]], name,
        skipped=int(arrays["skipped"]), unlabeled=int(arrays["unlabeled"]),
    )
    return data, [str(n) for n in arrays["skipped_names"] if n]


def _normalize_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    return tuple(int(s) for s in image_size)


# --------------------------------------------------------------------------- image folders


def load_image_folder(path, subset=None, image_size=None, cache_dir=None) -> ArrayData:
    """Images in `train/<class>/*` and `test/<class>/*`, from a directory or a `.zip`.

    The layout is the one `keras.utils.image_dataset_from_directory` reads;
    a zip may wrap it in one top-level folder. Files ending in .png, .jpg or
    .jpeg count (any case); hidden and `__MACOSX` files are ignored. Class
    names are the train/ subfolders, sorted; label i is the i-th name.
    Images are decoded as RGB, so arrays are `(n, h, w, 3)` uint8. Examples
    are dealt round-robin over classes in file-name order (`interleave_classes`),
    so any prefix of `x_train` is stratified.

    Corrupt images: a file that cannot be decoded is skipped rather than
    failing the whole load (one bad JPEG in 60,000 should not stop a run).
    One warning gives the count and the first few names, and the count is
    `result.skipped`. Under `subset` the next file of the same class replaces
    a skipped one.

    Decoded arrays are cached as `.npz` in `cache_dir`, keyed by the source
    path, its size and mtime (for a directory: file count, total size and
    newest mtime of its files), `subset` and `image_size`, and written
    atomically (temporary file + rename), so the next load skips decoding.

    Args:
        path: directory or `.zip` file.
        subset: keep only the first `subset` training images, stratified:
            `class_quotas` per class, the first files of each class in name
            order. The test split is always complete. Defaults to None (all).
        image_size: `(height, width)` or an int for square images to resize
            to. Defaults to None: keep the size, which must then be the same
            for every image.
        cache_dir: cache directory. Defaults to None: `$KERAS_MCV_CACHE` or
            `~/.cache/keras_mcv` (`default_cache_dir`), outside the repository.

    Raises:
        DataError: `path` is missing, not a readable zip, has no
            `train/<class>/<image>` or no `test/` files, a test class is not a
            train class, or sizes differ without `image_size`. All but the
            last are raised before any image is decoded.

    References:
        Thesis section 4.2.1 (CIFAR-10); the data notes on `cifar10-jpeg.zip`.
    """
    _check_subset(subset)
    path = Path(path).expanduser()
    image_size = _normalize_size(image_size)
    source = _open_source(path)
    try:
        members = source.members()
        _, train_items, test_items = _find_layout(members, path)
        class_names = sorted({c for _, c in train_items})
        unknown = sorted({c for _, c in test_items} - set(class_names))
        if unknown:
            raise DataError(
                f"{path}: test/ has classes {unknown} that train/ lacks. "
                f"Fix: use the same class subfolder names in train/ and test/."
            )
        index = {c: i for i, c in enumerate(class_names)}
        cache = _cache_file(
            cache_dir, path,
            source.fingerprint([m for m, _ in train_items + test_items]),
            {"subset": subset, "image_size": image_size, "kind": "image_folder"},
        )
        return _cached_decode(
            cache, source, path, path.stem, class_names,
            [(m, index[c]) for m, c in train_items], [(m, index[c]) for m, c in test_items],
            subset, image_size,
        )
    finally:
        source.close()


def _cached_decode(cache, source, path, name, class_names, train, test, subset, image_size, unlabeled=0):
    """The arrays in `cache` if it holds them, else decode `(member, label)` items and cache them.

    Warns once about skipped files, whichever way the data came.
    """
    cached = _read_cache(cache)
    if cached is not None:
        data, skipped_names = _from_cache(cached, name)
    else:
        n = len(class_names)
        everything = [len(train)] * n
        quota = everything if subset is None else class_quotas(n, subset)
        x_train, y_train, skip_train = _decode_items(source, train, n, quota, image_size, path)
        x_test, y_test, skip_test = _decode_items(source, test, n, everything, image_size, path)
        skipped_names = skip_train + skip_test
        data = ArrayData(
            x_train, y_train, x_test, y_test, list(class_names), name,
            skipped=len(skipped_names), unlabeled=unlabeled,
        )
        _write_cache(cache, _to_cache(data, skipped_names))
    _warn_skipped(path, data.skipped, skipped_names)
    return data


# --------------------------------------------------------------------------- CIFAR-10, SVHN


def _default_cifar10_path():
    """`$KERAS_MCV_CIFAR10`, else `../shared/data/cifar10-jpeg.zip` beside the repo, else None."""
    env = os.environ.get("KERAS_MCV_CIFAR10")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[1]
    for base in (repo.parent, Path.cwd().parent):
        candidate = base / "shared" / "data" / "cifar10-jpeg.zip"
        if candidate.exists():
            return candidate
    return None


def load_cifar10(data_path=None, subset=None) -> ArrayData:
    """CIFAR-10 as `(n, 32, 32, 3)` uint8 arrays, from an image folder/zip or tfds.

    Source, first match wins: `data_path` (directory or zip, read by
    `load_image_folder`); `$KERAS_MCV_CIFAR10`; `../shared/data/cifar10-jpeg.zip`
    beside the repository (or the working directory); `load_tfds("cifar10")`.

    Args:
        data_path: directory or zip in the `train/<class>/` layout.
            Defaults to None (search as above).
        subset: keep only the first `subset` training images, stratified.
            Defaults to None (all 50,000).

    Raises:
        DataError: the chosen source is missing or unreadable (an explicitly
            set `$KERAS_MCV_CIFAR10` that does not exist is an error, not a
            silent fallback to tfds).

    References:
        Thesis section 4.2.1.
    """
    path = Path(data_path) if data_path is not None else _default_cifar10_path()
    if path is not None:
        data = load_image_folder(path, subset=subset)
        return dataclasses.replace(data, name="cifar10")
    return _apply_subset(load_tfds("cifar10"), subset)


def load_svhn(data_path=None, subset=None) -> ArrayData:
    """SVHN digits (tfds `svhn_cropped`) as `(n, 32, 32, 3)` uint8 arrays.

    Args:
        data_path: tfds data directory holding a prepared `svhn_cropped`.
            Defaults to None (tfds's default, `~/tensorflow_datasets`).
        subset: keep only the first `subset` training images, stratified.
            Defaults to None (all 73,257).

    Raises:
        DataError: `svhn_cropped` is not prepared in the data directory.

    References:
        Thesis section 4.2.2.
    """
    data = load_tfds("svhn_cropped", data_dir=data_path)
    return dataclasses.replace(_apply_subset(data, subset), name="svhn")


# --------------------------------------------------------------------------- Adience


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


# --------------------------------------------------------------------------- tf.data


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over all but the last axis."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, dtype="float64").astype("float32")
    std = x.std(axis=axes, dtype="float64").astype("float32")
    return mean, np.maximum(std, 1e-6)


def normalize(data: ArrayData) -> ArrayData:
    """Per-channel standardisation with statistics of the training set only.

    uint8 images are cast to float32 first; the result is float32.
    """
    mean, std = channel_stats(data.x_train)
    return dataclasses.replace(
        data,
        x_train=((data.x_train.astype("float32") - mean) / std).astype("float32"),
        x_test=((data.x_test.astype("float32") - mean) / std).astype("float32"),
    )


AUGMENT_PAD = 4


def _augment_image(image, seed):
    """Random horizontal flip, then pad by `AUGMENT_PAD` and crop back at a random offset.

    Stateless ops seeded per example, so a fixed `make_dataset(seed=...)`
    gives the same augmented epochs on every run.
    """
    import tensorflow as tf

    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    p = AUGMENT_PAD
    padded = tf.pad(image, [[p, p], [p, p], [0, 0]])  # zero padding
    return tf.image.stateless_random_crop(padded, tf.shape(image), crop_seed)


def make_dataset(x, y, batch_size: int, shuffle: bool = False, augment: bool = False, seed=None):
    """A `tf.data.Dataset` of `(float32 x, int64 y)` batches.

    Pipeline: shuffle (whole array, reshuffled each epoch) -> per-example
    augmentation (horizontal flip + pad-4-and-random-crop translation) ->
    batch -> prefetch. Both extras are off by default, as in the thesis.

    Args:
        x: inputs `(n, ...)`; images `(n, h, w, c)` when `augment` is on.
        y: integer labels `(n,)`.
        batch_size: examples per batch; the last batch may be smaller.
        shuffle: shuffle the examples every epoch. Defaults to False.
        augment: random flip and translation of images. Defaults to False.
        seed: seed of shuffling and augmentation. Defaults to None (random).
    """
    import tensorflow as tf

    x, y = np.asarray(x), np.asarray(y)
    if augment and x.ndim != 4:
        raise ValueError(f"augment=True needs images (n, h, w, c); got x of shape {x.shape}.")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), tf.cast(b, tf.int64)))
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda xy, s: (_augment_image(xy[0], s), xy[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
