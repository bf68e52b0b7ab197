"""Batches drawn from a data source (data.py): shuffled and reused for calibration (with
augmentation and a background prefetch), in order for evaluation; samples holding NaN or Inf are
refused with the file and sample named, or skipped and counted.
"""
from __future__ import annotations

import logging
import queue
import threading

import numpy as np

from ..config import augment_kind
from . import LoaderScript
from ..errors import UserError, param

log = logging.getLogger(__name__)
IGNORE = 255   # the "ignore" class of segmentation masks


def _nonfinite_rows(feeds: dict) -> dict:
    """{input name: boolean mask of the samples holding NaN or Inf} for the float inputs with any."""
    found = {}
    for name, x in feeds.items():
        x = np.asarray(x)
        if x.dtype.kind != "f" or x.ndim == 0:
            continue
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            found[name] = bad
    return found


def _first_nonfinite(feeds: dict):
    """(input name, row) of the first sample holding NaN or Inf in a float input, else None."""
    for name, bad in _nonfinite_rows(feeds).items():
        return name, int(np.argmax(bad))
    return None


def _crop_flip(x: np.ndarray, layout: str, rng: np.random.Generator, pad: int):
    """(augmented x, flips [n], shifts [n, 2]): random horizontal flips and zero-padded random crops
    of a 4-D image batch, drawn for the whole batch at once (one flip draw per sample, then one
    (dy, dx) pair per sample)."""
    h_ax, w_ax = _spatial(layout)
    n, h, w = len(x), x.shape[h_ax], x.shape[w_ax]
    flips = rng.random(n) < 0.5
    shifts = rng.integers(0, 2 * pad + 1, size=(n, 2))
    x = x.copy()
    x[flips] = np.flip(x[flips], axis=w_ax)
    pads = [(0, 0)] * 4
    pads[h_ax] = pads[w_ax] = (pad, pad)
    # every crop of the padded batch as a view: the offsets replace the spatial axes, (h, w) appended
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, pads), (h, w), axis=(h_ax, w_ax))
    pick = [np.arange(n), slice(None), slice(None), slice(None)]
    pick[h_ax], pick[w_ax] = shifts[:, 0], shifts[:, 1]
    crops = windows[tuple(pick)]          # [n, channels, h, w]
    return np.ascontiguousarray(crops if layout == "NCHW" else np.moveaxis(crops, 1, 3)), flips, shifts


def _augment(x: np.ndarray, layout: str, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Random horizontal flips and zero-padded random crops of a 4-D image batch (CIFAR style)."""
    return _crop_flip(x, layout, rng, pad)[0]


def _spatial(layout: str):
    return (2, 3) if layout == "NCHW" else (1, 2)


def _crop_flip_masks(masks: np.ndarray, flips, shifts, pad: int) -> np.ndarray:
    """Masks [n, H, W] moved like their images by _crop_flip (the padding is IGNORE)."""
    n, h, w = masks.shape
    masks = masks.copy()
    masks[flips] = masks[flips][:, :, ::-1]
    padded = np.pad(masks, ((0, 0), (pad, pad), (pad, pad)), constant_values=IGNORE)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
    return np.ascontiguousarray(windows[np.arange(n), shifts[:, 0], shifts[:, 1]])


def _zoom_out(img: np.ndarray, ratio: float, pos, fill, nearest: bool = False) -> np.ndarray:
    """`img` [..., H, W] placed at fractional position `pos` (y, x) on a canvas `ratio` times its size
    filled with `fill` (per leading index, or a scalar), then resized back to H, W (bilinear with
    half-pixel centres, or nearest for masks)."""
    h, w = img.shape[-2:]
    ch, cw = max(h, int(round(h * ratio))), max(w, int(round(w * ratio)))
    top, left = min(int(pos[0] * (ch - h + 1)), ch - h), min(int(pos[1] * (cw - w + 1)), cw - w)
    canvas = np.empty(img.shape[:-2] + (ch, cw), img.dtype)
    canvas[...] = np.asarray(fill, img.dtype).reshape(np.shape(fill) + (1, 1))
    canvas[..., top:top + h, left:left + w] = img
    if nearest:
        ys = np.minimum(((np.arange(h) + 0.5) * ch / h).astype(np.int64), ch - 1)
        xs = np.minimum(((np.arange(w) + 0.5) * cw / w).astype(np.int64), cw - 1)
        return canvas[..., ys[:, None], xs[None, :]]
    out = np.zeros(img.shape, np.float32)
    ys, xs = _bilinear_taps(h, ch), _bilinear_taps(w, cw)
    for y, wy in ys:
        for x, wx in xs:
            out += (wy[:, None] * wx[None, :]) * canvas[..., y[:, None], x[None, :]]
    return out


def _bilinear_taps(n: int, src: int):
    """The two (source index, weight) taps per output pixel of a resize from `src` to `n` pixels."""
    pos = np.clip((np.arange(n) + 0.5) * src / n - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, src - 1)
    frac = (pos - lo).astype(np.float32)
    return (lo, 1 - frac), (hi, frac)


def _ssd(feeds: dict, images: list, masks, layout: str, rng: np.random.Generator, prep):
    """SSD-style augmentation: photometric distortion (on the [0, 1] image, when the
    normalisation is known), zoom out onto a mean-filled canvas (ratio in [1, 2]) and horizontal
    flip, each with probability 0.5 per sample; the draws are shared by all image inputs and masks."""
    n = len(feeds[images[0]])
    bright = np.where(rng.random(n) < 0.5, rng.uniform(-32 / 255, 32 / 255, n), 0.0)
    contrast = np.where(rng.random(n) < 0.5, rng.uniform(0.5, 1.5, n), 1.0)
    saturation = np.where(rng.random(n) < 0.5, rng.uniform(0.5, 1.5, n), 1.0)
    zoom = rng.random(n) < 0.5
    ratio = rng.uniform(1.0, 2.0, n)
    pos = rng.random((n, 2))
    flips = rng.random(n) < 0.5
    col = (slice(None), None, None, None)   # per-sample values broadcast over C, H, W
    out = dict(feeds)
    for name in images:
        raw = np.asarray(feeds[name])
        x = raw.astype(np.float32)
        if layout == "NHWC":
            x = np.moveaxis(x, 3, 1)
        c = x.shape[1]
        mean = np.asarray(getattr(prep, "mean", ()), np.float32).reshape(-1)
        std = np.asarray(getattr(prep, "std", ()), np.float32).reshape(-1)
        known = mean.size in (1, c) and std.size in (1, c)
        if known:
            mean, std = mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)
            img = x * std + mean
            img = img + bright[col].astype(np.float32)
            grey = img.mean(axis=(1, 2, 3), keepdims=True)
            img = grey + contrast[col].astype(np.float32) * (img - grey)
            if c == 3:
                grey = img.mean(axis=1, keepdims=True)
                img = grey + saturation[col].astype(np.float32) * (img - grey)
            x = (np.clip(img, 0.0, 1.0) - mean) / std
            fill = np.zeros((n, c), np.float32)                     # the mean, normalised
        else:
            fill = x.mean(axis=(2, 3))                              # the image's own mean colour
        for i in np.flatnonzero(zoom):
            x[i] = _zoom_out(x[i], ratio[i], pos[i], fill[i])
        x[flips] = x[flips][..., ::-1]
        if layout == "NHWC":
            x = np.moveaxis(x, 1, 3)
        if raw.dtype.kind in "iu":
            lim = np.iinfo(raw.dtype)
            x = np.clip(np.rint(x), lim.min, lim.max)
        out[name] = np.ascontiguousarray(x.astype(raw.dtype))
    if masks is not None:
        masks = masks.copy()
        for i in np.flatnonzero(zoom):
            masks[i] = _zoom_out(masks[i], ratio[i], pos[i], IGNORE, nearest=True)
        masks[flips] = masks[flips][:, :, ::-1]
    return out, masks


def augment_batch(feeds: dict, labels, kind: str | None, layout: str, rng: np.random.Generator, prep=None):
    """(feeds, labels) augmented with `kind` ("crop-flip", "flip", "ssd" or None) on the 4-D (image)
    inputs; label masks [N, H, W] of the images' size are moved with the images, other labels
    are passed through. `prep`: the data's normalisation (mean/std), for "ssd"'s photometric step."""
    images = [k for k, v in feeds.items() if np.ndim(v) == 4]
    if kind is None or not images:
        return feeds, labels
    h_ax, w_ax = _spatial(layout)
    first = feeds[images[0]]
    n, hw = len(first), (first.shape[h_ax], first.shape[w_ax])
    masks = labels if isinstance(labels, np.ndarray) and labels.ndim == 3 and labels.dtype.kind in "biu" \
        and len(labels) == n and labels.shape[1:] == hw else None
    out = dict(feeds)
    if kind == "crop-flip":
        draws = None
        for name in images:     # one draw each, in the feeds' order (as before the kinds existed)
            out[name], flips, shifts = _crop_flip(feeds[name], layout, rng, 4)
            draws = draws or (flips, shifts)
        if masks is not None:
            masks = _crop_flip_masks(masks, *draws, 4)
    elif kind == "flip":
        flips = rng.random(n) < 0.5
        for name in images:
            x = np.array(feeds[name])
            x[flips] = np.flip(x[flips], axis=w_ax)
            out[name] = x
        if masks is not None:
            masks = masks.copy()
            masks[flips] = masks[flips][:, :, ::-1]
    elif kind == "ssd":
        out, masks = _ssd(feeds, images, masks, layout, rng, prep)
    else:
        raise UserError(f"{param('augment')} {kind}: expected crop-flip, flip or ssd")
    return out, (labels if masks is None else masks)


def _take(labels, good: np.ndarray):
    """The labels of the rows `good` (a boolean mask): arrays indexed, lists (detection meta) picked."""
    if labels is None:
        return None
    if isinstance(labels, list):
        return [labels[i] for i in np.flatnonzero(good)]
    return labels[good]


class NonFinite:
    """What to do with samples holding NaN or Inf: stop with an error naming the sample (default),
    or skip the batch (calibration) or the samples (evaluation-style sample sets) and count them."""

    def __init__(self, skip: bool = False):
        self.skip, self.skipped = skip, 0

    def rows(self, feeds: dict, labels, where):
        """(feeds, labels) without the samples holding NaN/Inf when skipping; else as `ok`."""
        if not self.skip:
            self.ok(feeds, where)
            return feeds, labels
        masks = _nonfinite_rows(feeds)
        if not masks:
            return feeds, labels
        good = ~np.logical_or.reduce(list(masks.values()))
        self.skipped += int((~good).sum())
        return {k: v[good] for k, v in feeds.items()}, _take(labels, good)

    def ok(self, feeds: dict, where) -> bool:
        bad = _first_nonfinite(feeds)
        if bad is None:
            return True
        if self.skip:
            self.skipped += 1
            return False
        name, row = bad
        raise UserError(f"{where(row)}: input '{name}' holds NaN or Inf (fix the data, or pass "
                        f"{param('skip_nonfinite')} to skip such batches)")


def _where(source, indices):
    return lambda row: source.describe(int(indices[row]))


def calibration_plan(n: int, batch_size: int, iters: int, seed: int) -> list:
    """The sample indices of `iters` calibration batches of a source of `n` samples: a shuffled
    order drawn from `seed`, drawn again whenever the data runs out (a batch never holds a sample
    twice unless the source is smaller than a batch)."""
    rng = np.random.default_rng(seed)
    order, pos, plan = rng.permutation(n), 0, []
    for _ in range(iters):
        take = []
        while len(take) < min(batch_size, n):
            if pos == n:
                order, pos = rng.permutation(n), 0
            step = min(batch_size - len(take), n - pos)
            take.extend(int(i) for i in order[pos:pos + step])
            pos += step
        plan.append(take)
    return plan


def augment_rng(seed: int, index: int) -> np.random.Generator:
    """The random draws of calibration batch `index`'s augmentation: its own stream of `seed`, so a
    batch is augmented the same wherever and whenever it is read."""
    return np.random.default_rng([seed, index])


def read_calibration(source, take, index: int, kind, layout: str, seed: int, nonfinite: NonFinite, prep=None):
    """Calibration batch `index` (samples `take` of a random-access source), augmented, or None when
    it holds NaN/Inf and those are skipped."""
    feeds, labels = source.batch(take)
    if not nonfinite.ok(feeds, _where(source, take)):
        return None
    return augment_batch(feeds, labels, kind, layout, augment_rng(seed, index), prep)[0]


def calibration_batches(source, batch_size: int, iters: int, seed: int, augment: bool | str | None = False,
                        layout: str = "NCHW", nonfinite: NonFinite | None = None, prep=None):
    """`iters` batches (calibration_plan); samples reused in a fresh shuffled order whenever the
    data runs out. `augment`: False/None, True (= "crop-flip"), "crop-flip", "flip" or "ssd" (see
    augment_batch), drawn per batch from `seed` (augment_rng); `prep`: the data's Preprocess
    (default: the source's own, if any). A loader script's batches come in its order."""
    kind = augment_kind(augment)
    nonfinite = nonfinite or NonFinite()
    if prep is None:
        prep = getattr(source, "prep", None)
    if isinstance(source, LoaderScript):
        produced = 0
        while produced < iters:
            before = produced
            for k, (feeds, labels) in enumerate(source.batches()):
                if produced >= iters:
                    return
                if not nonfinite.ok(feeds, lambda row, k=k: f"{param('data_loader')} {source.spec}: batch {k} row {row}"):
                    continue
                feeds, _ = augment_batch(feeds, labels, kind, layout, augment_rng(seed, produced), prep)
                produced += 1
                yield feeds
            if produced == before:
                return   # every batch was skipped: nothing more will come
        return
    for index, take in enumerate(calibration_plan(len(source), batch_size, iters, seed)):
        feeds = read_calibration(source, take, index, kind, layout, seed, nonfinite, prep)
        if feeds is not None:
            yield feeds


def prefetch(batches, depth: int = 2):
    """Yield the items of the iterable `batches`, produced `depth` ahead by a background thread, so
    that decoding and augmenting the next batches overlaps onnxruntime running the current one
    (both release the GIL). One producer keeps the order, so results are the same as without it;
    an exception in the producer is raised here; closing the generator stops the producer."""
    items: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((done, None))
        except BaseException as err:   # handed to the consumer, which raises it
            items.put((done, err))

    thread = threading.Thread(target=produce, name="onnx2snn-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = items.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()


def eval_plan(n: int, batch_size: int, limit: int | None = None, exact: bool = False) -> list:
    """The sample indices of each evaluation batch of a source of `n` samples, in order: at most
    `limit` samples (a fixed random subset, so class-sorted folders are not cut to few classes);
    with `exact` (a model with a fixed batch size) a last batch that would be short is dropped,
    with a warning."""
    order = np.arange(n) if limit is None or limit >= n else \
        np.sort(np.random.default_rng(0).permutation(n)[:limit])
    plan = [[int(i) for i in order[start:start + batch_size]] for start in range(0, len(order), batch_size)]
    if exact and plan and len(plan[-1]) < batch_size:
        log.warning("the last %d sample(s) do not fill the model's fixed batch of %d and are skipped",
                    len(plan[-1]), batch_size)
        plan.pop()
    return plan


def read_eval(source, chunk, exact: bool, nonfinite: NonFinite):
    """(feeds, labels) of the samples `chunk` of a random-access source, those holding NaN/Inf
    dropped when skipping; None when none is left (or, with `exact`, when any was dropped)."""
    feeds, labels = nonfinite.rows(*source.batch(chunk), _where(source, chunk))
    if len(next(iter(feeds.values()))) >= (len(chunk) if exact else 1):
        return feeds, labels
    return None


class EvalBatches:
    """(feeds, labels) in order (see eval_batches); also what a cluster needs to read the same
    batches elsewhere: the source, the plan of sample indices, `exact` and the NaN/Inf policy."""

    def __init__(self, source, plan, exact: bool, nonfinite: NonFinite, labels: bool = True):
        self.source, self.plan, self.exact, self.nonfinite = source, plan, exact, nonfinite
        self.labels = labels            # False: (feeds, None), for steps that never score labels

    def __iter__(self):
        for chunk in self.plan:
            got = read_eval(self.source, chunk, self.exact, self.nonfinite)
            if got is not None:
                yield got if self.labels else (got[0], None)

    def without_labels(self) -> "EvalBatches":
        return EvalBatches(self.source, self.plan, self.exact, self.nonfinite, labels=False)


def _loader_eval(source, limit, exact, check):
    seen = 0
    for k, (feeds, labels) in enumerate(source.batches()):
        if limit is not None and seen >= limit:
            return
        size = len(next(iter(feeds.values())))
        feeds, labels = check.rows(feeds, labels, lambda row, k=k: f"{param('data_loader')} {source.spec}: batch {k} row {row}")
        if len(next(iter(feeds.values()))) < (size if exact else 1):
            continue      # all skipped, or a fixed-size batch that lost samples
        if limit is not None:
            keep = limit - seen
            feeds = {k: v[:keep] for k, v in feeds.items()}
            labels = None if labels is None else labels[:keep]
        seen += len(next(iter(feeds.values())))
        yield feeds, labels


def eval_batches(source, batch_size: int, limit: int | None = None, exact: bool = False,
                 nonfinite: NonFinite | None = None):
    """(feeds, labels) in order, at most `limit` samples (eval_plan). With `exact` (a model with a
    fixed batch size) a last batch that would be short is skipped, with a warning. `nonfinite`: stop
    at NaN/Inf (default) or drop those samples (--skip-nonfinite). A random-access source gives an
    EvalBatches, a loader script a generator of its batches."""
    check = nonfinite or NonFinite()
    if isinstance(source, LoaderScript):
        return _loader_eval(source, limit, exact, check)
    return EvalBatches(source, eval_plan(len(source), batch_size, limit, exact), exact, check)
