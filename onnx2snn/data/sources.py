"""Calibration and evaluation data sources: image folders, .npy/.npz files, or a user loader script.

Sources give random access to samples (images are decoded per batch, arrays are memory-mapped),
so nothing is loaded whole. A loader script's function returns an iterable of feed dicts. How
batches are drawn from them is batches.py; the VOC and COCO sources are in datasets.py.
"""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UserError, param
from .inputs import Preprocess, check_dtype, check_fits
from ..files import raised, user_function

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
ARRAY_EXTS = {".npy", ".npz"}
CACHE_ENV = "ONNX2SNN_IMAGE_CACHE_MB"
LABEL_KEYS = ("y", "label", "labels")   # class ids, masks or targets, told apart by dtype and rank
MASK_KEYS = ("mask", "masks")           # segmentation masks [N, H, W]
TARGET_KEYS = ("target", "targets")     # regression targets [N, ...]


class Source:
    """Random-access samples: len(), batch(indices) -> (feeds, labels or None).

    Labels: class ids int64 [N] (classification), masks int64 [N, H, W] at the model input's size
    (segmentation, 255 = ignore), a list of N dicts {"image_id", "width", "height", "file_name"}
    (detection: the original image's size), or float32 [N, ...] targets (regression).
    `task_hint`: "classify", "segment", "detect", "regress", or None when the data does not tell."""
    labels_known = False
    task_hint: str | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices):
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where sample `index` comes from (a file, or a file and a position), for messages."""
        raise NotImplementedError


class Subset(Source):
    """Some samples of a source (e.g. calibration samples held back for choosing settings)."""

    def __init__(self, source: Source, indices):
        self.source, self.indices = source, np.asarray(indices, np.int64)
        self.labels_known = source.labels_known
        self.task_hint = source.task_hint

    def __getattr__(self, name):          # layout, prep, ... of the underlying source
        return getattr(self.source, name)

    def __len__(self):
        return len(self.indices)

    def batch(self, indices):
        return self.source.batch(self.indices[np.asarray(indices, np.int64)])

    def describe(self, index: int) -> str:
        return self.source.describe(int(self.indices[index]))


def split(source, held: int, seed: int):
    """(rest, held back): `held` samples of a random-access source set aside with `seed`; a loader
    script cannot be split (both are the script)."""
    if not isinstance(source, Source) or len(source) < 2 * held:
        return source, source
    order = np.random.default_rng(seed).permutation(len(source))
    return Subset(source, np.sort(order[held:])), Subset(source, np.sort(order[:held]))


def _cache_budget() -> float:
    """Bytes of decoded images an image folder keeps ($ONNX2SNN_IMAGE_CACHE_MB, default 2048)."""
    text = os.environ.get(CACHE_ENV, "2048")
    try:
        mb = float(text)
    except ValueError:
        mb = float("nan")
    if not mb >= 0 or mb == float("inf"):
        raise UserError(f"${CACHE_ENV}={text}: expected a number of megabytes >= 0")
    return mb * 2 ** 20


class ImageSource(Source):
    """What the image-file sources share: the model input's geometry checked against the
    preprocessing, images decoded, resized/cropped and normalised, and decoded samples cached."""

    def _setup_images(self, where, inputs, prep: Preprocess, what: str = "an image folder"):
        if len(inputs) != 1:
            raise UserError(f"{where}: {what} can feed a model with one input, this one has "
                            f"{len(inputs)}; use .npz files or {param('data_loader')}")
        self.info = inputs[0]
        shape = self.info.shape or (None, None, None, None)
        if len(shape) != 4:
            raise UserError(f"{where}: images need a 4-D model input, '{self.info.name}' has rank {len(shape)}")
        layout = prep.layout or ("NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW")
        if layout not in ("NCHW", "NHWC"):
            raise UserError(f"{param('layout')} {layout}: expected NCHW or NHWC")
        chan, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
        size = prep.size or ((h, w) if h is not None and w is not None else prep.crop) or (h, w)
        if size[0] is None or size[1] is None:
            raise UserError(f"{where}: the model input '{self.info.name}' has no fixed height/width; pass "
                            f"{param('size')} H,W")
        size = (int(size[0]), int(size[1]))
        if prep.crop is not None and tuple(prep.crop) != size:
            given = param("size") if prep.size else f"the model input '{self.info.name}'"
            raise UserError(f"{param('crop')} {prep.crop[0]},{prep.crop[1]}: {given} takes {size[0]}x{size[1]} "
                            f"images; the crop must be {size[0]},{size[1]}")
        if prep.resize is not None and max(size) > prep.resize:
            raise UserError(f"{param('resize')} {prep.resize}: smaller than the {size[0]}x{size[1]} centre crop "
                            f"the model input '{self.info.name}' takes")
        self.channels = chan or 3
        if self.channels not in (1, 3):
            raise UserError(f"{where}: images give 1 or 3 channels, input '{self.info.name}' wants {self.channels}")
        self.size, self.layout = size, layout
        self.resize, self.crop = prep.resize, prep.crop
        self.mean = np.asarray(prep.mean, np.float32).reshape(-1)
        self.std = np.asarray(prep.std, np.float32).reshape(-1)
        for arr, flag in ((self.mean, param("mean")), (self.std, param("std"))):
            if arr.size not in (1, self.channels):
                raise UserError(f"{flag}: {arr.size} values given, the input has {self.channels} channels")
        self.prep = Preprocess(tuple(map(float, self.mean)), tuple(map(float, self.std)), self.size, layout,
                               prep.resize, prep.crop)
        sample = (self.channels,) + self.size if layout == "NCHW" else self.size + (self.channels,)
        check_fits(str(where), self.info, sample)
        # decoded samples kept for the next epochs (calibration reads each image many times),
        # up to $ONNX2SNN_IMAGE_CACHE_MB (default 2048) in all
        self._decoded, self._cache_left = {}, _cache_budget()

    def _fit(self, img, resample, path):
        """`img` (PIL) brought to the model input's size: resized whole, or (with --resize/--crop)
        its shorter side resized and the centre cropped."""
        h, w = self.size
        if self.resize is None and self.crop is None:
            return img if img.size == (w, h) else img.resize((w, h), resample)
        if self.resize is not None:
            iw, ih = img.size
            short, long_ = min(iw, ih), max(iw, ih)
            other = max(self.resize, int(self.resize * long_ / short))
            new = (self.resize, other) if iw <= ih else (other, self.resize)
            if new != img.size:
                img = img.resize(new, resample)
        iw, ih = img.size
        if iw < w or ih < h:
            raise UserError(f"{path}: the image is {iw}x{ih} pixels, smaller than the {h}x{w} centre crop "
                            f"({param('crop')}); pass {param('resize')}")
        top, left = int(round((ih - h) / 2.0)), int(round((iw - w) / 2.0))
        return img.crop((left, top, left + w, top + h))

    def _read(self, path: Path):
        """(normalised sample laid out for the input, the image's original (width, height))."""
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(path) as img:
                original = img.size
                img = self._fit(img.convert("L" if self.channels == 1 else "RGB"), Image.BILINEAR, path)
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"{path}: cannot read image ({err})") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        arr = (arr - self.mean) / self.std
        return (arr.transpose(2, 0, 1) if self.layout == "NCHW" else arr), original

    def _load(self, path: Path) -> np.ndarray:
        return self._read(path)[0]

    def _cached(self, key, make):
        """make()'s result (an array or a tuple of arrays), kept while the cache budget lasts."""
        value = self._decoded.get(key)
        if value is None:
            value = make()
            nbytes = sum(a.nbytes for a in value) if isinstance(value, tuple) else value.nbytes
            if nbytes <= self._cache_left:
                self._decoded[key] = value
                self._cache_left -= nbytes
        return value


class ImageFolder(ImageSource):
    """Images in class sub-folders (labels = the sorted folder index), or a flat folder (no labels)."""

    def __init__(self, root: Path, inputs, prep: Preprocess):
        self._setup_images(root, inputs, prep)
        self.root = root
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        files, labels = [], []
        if classes:
            for idx, cls in enumerate(classes):
                for f in sorted((root / cls).rglob("*")):
                    if f.suffix.lower() in IMAGE_EXTS and f.is_file():
                        files.append(f)
                        labels.append(idx)
            self.labels_known = True
            self.task_hint = "classify"
        else:
            files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        if not files:
            raise UserError(f"{root}: no images found (expected class sub-folders of "
                            f"{'/'.join(sorted(e[1:] for e in IMAGE_EXTS))} files)")
        self.classes = classes
        self.files, self.labels = files, np.asarray(labels, np.int64)

    def __len__(self):
        return len(self.files)

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def _sample(self, index: int) -> np.ndarray:
        return self._cached(index, lambda: self._load(self.files[index]))

    def batch(self, indices):
        x = np.stack([self._sample(int(i)) for i in indices]).astype(self.info.dtype)
        labels = self.labels[np.asarray(indices)] if self.labels_known else None
        return {self.info.name: x}, labels


def _npz_member(path: Path, key: str):
    """Memory-map an uncompressed .npz member; load compressed ones (they cannot be mapped)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
        if info.compress_type == zipfile.ZIP_STORED:
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = reader(fh)
                header = fh.tell()
            with open(path, "rb") as raw:
                raw.seek(info.header_offset + 26)
                name_len = int.from_bytes(raw.read(2), "little")
                extra_len = int.from_bytes(raw.read(2), "little")
            offset = info.header_offset + 30 + name_len + extra_len + header
            if not shape or np.prod(shape) == 0:
                return np.zeros(shape, dtype)
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                             order="F" if fortran else "C")
    log.info("%s: member %s is compressed and is loaded whole", path, key)
    return np.load(path)[key]


class ArrayFiles(Source):
    """One .npy/.npz file or a folder of them, concatenated along the sample axis."""

    def __init__(self, files, inputs, where: str):
        self.inputs = inputs
        self.chunks = []  # (feeds dict of arrays, labels or None, length)
        self.files = list(files)
        kinds = {}
        for f in files:
            arrays = self._open(f)
            key = next((k for k in LABEL_KEYS + MASK_KEYS + TARGET_KEYS if k in arrays), None)
            label = None if key is None else arrays.pop(key)
            if len(arrays) == 1 and len(inputs) == 1:
                arrays = {inputs[0].name: next(iter(arrays.values()))}
            missing = [i.name for i in inputs if i.name not in arrays]
            if missing:
                raise UserError(f"{f}: no array for model input(s) {', '.join(missing)} "
                                f"(arrays: {', '.join(sorted(arrays)) or 'none'})")
            lengths = {len(arrays[i.name]) if np.ndim(arrays[i.name]) else 0 for i in inputs}
            if len(lengths) != 1 or 0 in lengths:
                raise UserError(f"{f}: input arrays have different or zero lengths {sorted(lengths)}")
            n = lengths.pop()
            for info in inputs:
                check_fits(str(f), info, tuple(arrays[info.name].shape[1:]))
                check_dtype(str(f), info, arrays[info.name].dtype)
            if label is not None:
                if np.ndim(label) == 0 or len(label) != n:
                    count = len(label) if np.ndim(label) else "no"
                    raise UserError(f"{f}: labels '{key}' have {count} entries for {n} samples")
                kinds[f] = (key, self._label_kind(f, key, label, inputs))
            self.chunks.append(({i.name: arrays[i.name] for i in inputs}, label, n))
        if not self.chunks:
            raise UserError(f"{where}: no .npy/.npz files found")
        self.labels_known = all(c[1] is not None for c in self.chunks)
        self.starts = np.cumsum([0] + [c[2] for c in self.chunks])
        found = {kind for _, kind in kinds.values()}
        if len(found) > 1:
            listing = "; ".join(f"{f.name}: '{key}' {kind[0]} {list(kind[1])}" for f, (key, kind) in kinds.items())
            raise UserError(f"{where}: the files' labels differ in kind or sample shape ({listing})")
        self.label_kind = found.pop() if found and self.labels_known else None
        self.task_hint = self.label_kind[0] if self.label_kind else None

    @staticmethod
    def _label_kind(f: Path, key: str, label, inputs) -> tuple:
        """(task, per-sample shape) of a label array: "classify" (int ids, or integral floats under
        y/label/labels), "segment" (int masks of rank >= 2 per sample) or "regress" (floats)."""
        dtype, per = np.dtype(label.dtype), tuple(label.shape[1:])
        shape = "[" + ", ".join(["N"] + [str(d) for d in per]) + "]"
        if dtype.kind not in "biuf":
            raise UserError(f"{f}: labels '{key}' are {dtype}, expected numbers")
        if key in TARGET_KEYS:
            return "regress", per
        integral = dtype.kind in "biu"
        if key in MASK_KEYS and not (integral and len(per) >= 2):
            raise UserError(f"{f}: masks '{key}' are {dtype} {shape}, expected integers [N, H, W]")
        if integral and len(per) >= 2:
            want = inputs[0].shape if len(inputs) == 1 and inputs[0].shape else None
            if want and len(want) == 4 and all(isinstance(d, int) for d in want[1:]) \
                    and per[-2:] not in (tuple(want[2:4]), tuple(want[1:3])):
                raise UserError(f"{f}: masks '{key}' {shape} do not match the height and width of input "
                                f"'{inputs[0].name}' {list(want[1:])}")
            return "segment", per[1:] if len(per) == 3 and per[0] == 1 else per   # [N, 1, H, W] -> [N, H, W]
        if integral and per in ((), (1,)):
            return "classify", ()
        if integral:
            raise UserError(f"{f}: labels '{key}' are integers {shape}: expected class ids [N] "
                            "or masks [N, H, W] (float labels are regression targets)")
        if per in ((), (1,)) and np.all(np.mod(np.asarray(label), 1) == 0):
            return "classify", ()    # class ids saved as floats (as read before regression targets)
        return "regress", per

    @staticmethod
    def _open(f: Path) -> dict:
        try:
            if f.suffix.lower() == ".npy":
                return {"x": np.load(f, mmap_mode="r")}
            with zipfile.ZipFile(f) as zf:
                keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            return {k: _npz_member(f, k) for k in keys}
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise UserError(f"{f}: cannot read array file ({err})") from None

    def __len__(self):
        return int(self.starts[-1])

    def describe(self, index: int) -> str:
        c = int(np.searchsorted(self.starts, index, side="right") - 1)
        return f"{self.files[c]} sample {int(index - self.starts[c])}"

    def batch(self, indices):
        indices = np.asarray(indices)
        chunk_of = np.searchsorted(self.starts, indices, side="right") - 1
        feeds = {i.name: [] for i in self.inputs}
        labels = []
        for idx, c in zip(indices, chunk_of):
            arrays, label, _ = self.chunks[c]
            local = idx - self.starts[c]
            for info in self.inputs:
                feeds[info.name].append(np.asarray(arrays[info.name][local]))
            if label is not None:
                labels.append(np.asarray(label[local]))
        out = {i.name: np.stack(feeds[i.name]).astype(i.dtype) for i in self.inputs}
        if not self.labels_known:
            return out, None
        task, per = self.label_kind
        if task == "regress":
            return out, np.stack(labels).astype(np.float32).reshape((len(labels),) + per)
        return out, np.stack(labels).astype(np.int64).reshape((len(labels),) + per)


class LoaderScript:
    """`file.py:fn`, where fn() returns an iterable of feed dicts (one batch each; 'y' = labels)."""
    task_hint = None

    def __init__(self, spec: str, inputs):
        self.fn, self.spec, self.inputs = user_function(spec, param("data_loader")), spec, inputs

    def _call(self):
        """The user's iterable, with any exception it raises turned into one line naming it."""
        try:
            yield from self.fn()
        except UserError:
            raise
        except Exception as err:
            raise raised(param("data_loader"), self.spec, err) from None

    def batches(self):
        """Yield (feeds, labels) forever-or-once; the caller decides when to stop."""
        count = 0
        for item in self._call():
            if not isinstance(item, dict):
                raise UserError(f"{param('data_loader')} {self.spec}: yielded {type(item).__name__}, expected a dict")
            item = dict(item)
            labels = next((np.asarray(item.pop(k)) for k in LABEL_KEYS if k in item), None)
            missing = [i.name for i in self.inputs if i.name not in item]
            if missing:
                raise UserError(f"{param('data_loader')} {self.spec}: batch lacks input(s) {', '.join(missing)}")
            feeds = {}
            where = f"{param('data_loader')} {self.spec}: batch {count}"
            for info in self.inputs:
                raw = np.asarray(item[info.name])
                if raw.ndim == 0 or raw.dtype.kind not in "biuf":
                    raise UserError(f"{where}: input '{info.name}' must be a numeric array with a batch axis")
                check_dtype(where, info, raw.dtype)
                arr = raw.astype(info.dtype)
                check_fits(where, info, arr.shape[1:])
                feeds[info.name] = arr
            count += 1
            yield feeds, labels
        if count == 0:
            raise UserError(f"{param('data_loader')} {self.spec}: yielded no batches")
