"""Image folders and zips in the `train/<class>/`, `test/<class>/` layout, decoded once
and cached as `.npz` outside the repository (the CIFAR-10 JPEG copy reads this way).

References: thesis section 4.2 (datasets).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from keras_mcv.data.arrays import (
    ArrayData,
    DataError,
    _check_subset,
    class_quotas,
    interleave_classes,
)
from keras_mcv.records import write_atomic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


# Bump when the cached arrays' meaning changes, so old cache files are ignored.
_CACHE_VERSION = 1


# How many skipped file names a warning quotes.
_WARN_NAMES = 5


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


def _warn_skipped(path, count, names, what="undecodable or missing image file(s)"):
    if count:
        shown = ", ".join(names[:_WARN_NAMES]) + (", ..." if count > _WARN_NAMES else "")
        warnings.warn(f"{path}: skipped {count} {what}: {shown}", stacklevel=4)


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
        write_atomic(file, lambda f: np.savez(f, **arrays), mode="wb")
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
