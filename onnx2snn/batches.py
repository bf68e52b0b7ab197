"""Batches drawn from a data source (data.py): shuffled and reused for calibration (with
augmentation and a background prefetch), in order for evaluation; samples holding NaN or Inf are
refused with the file and sample named, or skipped and counted.
"""
from __future__ import annotations

import logging
import queue
import threading

import numpy as np

from .data import LoaderScript
from .errors import UserError

log = logging.getLogger(__name__)


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


def _augment(x: np.ndarray, layout: str, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Random horizontal flips and zero-padded random crops (4-D image batches), drawn for the whole
    batch at once (one flip draw per sample, then one (dy, dx) pair per sample)."""
    h_ax, w_ax = (2, 3) if layout == "NCHW" else (1, 2)
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
    return np.ascontiguousarray(crops if layout == "NCHW" else np.moveaxis(crops, 1, 3))


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
        return {k: v[good] for k, v in feeds.items()}, None if labels is None else labels[good]

    def ok(self, feeds: dict, where) -> bool:
        bad = _first_nonfinite(feeds)
        if bad is None:
            return True
        if self.skip:
            self.skipped += 1
            return False
        name, row = bad
        raise UserError(f"{where(row)}: input '{name}' holds NaN or Inf (fix the data, or pass "
                        "--skip-nonfinite to skip such batches)")


def _where(source, indices):
    return lambda row: source.describe(int(indices[row]))


def calibration_batches(source, batch_size: int, iters: int, seed: int, augment: bool = False,
                        layout: str = "NCHW", nonfinite: NonFinite | None = None):
    """`iters` batches; samples reused in a fresh shuffled order whenever the data runs out."""
    rng = np.random.default_rng(seed)
    nonfinite = nonfinite or NonFinite()
    if isinstance(source, LoaderScript):
        produced = 0
        while produced < iters:
            before = produced
            for k, (feeds, _) in enumerate(source.batches()):
                if produced >= iters:
                    return
                if not nonfinite.ok(feeds, lambda row, k=k: f"--data-loader {source.spec}: batch {k} row {row}"):
                    continue
                if augment:
                    feeds = {name: _augment(v, layout, rng) if v.ndim == 4 else v for name, v in feeds.items()}
                produced += 1
                yield feeds
            if produced == before:
                return   # every batch was skipped: nothing more will come
        return
    n = len(source)
    order, pos = rng.permutation(n), 0
    for _ in range(iters):
        take = []
        while len(take) < min(batch_size, n):
            if pos == n:
                order, pos = rng.permutation(n), 0
            step = min(batch_size - len(take), n - pos)
            take.extend(order[pos:pos + step])
            pos += step
        feeds, _ = source.batch(take)
        if not nonfinite.ok(feeds, _where(source, take)):
            continue
        if augment:
            feeds = {k: _augment(v, layout, rng) if v.ndim == 4 else v for k, v in feeds.items()}
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


def eval_batches(source, batch_size: int, limit: int | None = None, exact: bool = False,
                 nonfinite: NonFinite | None = None):
    """(feeds, labels) in order, at most `limit` samples. With `exact` (a model with a fixed batch
    size) a last batch that would be short is skipped, with a warning. `nonfinite`: stop at NaN/Inf
    (default) or drop those samples (--skip-nonfinite)."""
    check = nonfinite or NonFinite()
    if isinstance(source, LoaderScript):
        seen = 0
        for k, (feeds, labels) in enumerate(source.batches()):
            if limit is not None and seen >= limit:
                return
            size = len(next(iter(feeds.values())))
            feeds, labels = check.rows(feeds, labels, lambda row, k=k: f"--data-loader {source.spec}: batch {k} row {row}")
            if len(next(iter(feeds.values()))) < (size if exact else 1):
                continue      # all skipped, or a fixed-size batch that lost samples
            if limit is not None:
                keep = limit - seen
                feeds = {k: v[:keep] for k, v in feeds.items()}
                labels = None if labels is None else labels[:keep]
            seen += len(next(iter(feeds.values())))
            yield feeds, labels
        return
    n = len(source)
    # a limited run takes a fixed random subset, so class-sorted folders are not cut to few classes
    order = np.arange(n) if limit is None or limit >= n else \
        np.sort(np.random.default_rng(0).permutation(n)[:limit])
    for start in range(0, len(order), batch_size):
        chunk = list(order[start:start + batch_size])
        if exact and len(chunk) < batch_size:
            log.warning("the last %d sample(s) do not fill the model's fixed batch of %d and are skipped",
                        len(chunk), batch_size)
            return
        feeds, labels = check.rows(*source.batch(chunk), _where(source, chunk))
        if len(next(iter(feeds.values()))) >= (len(chunk) if exact else 1):
            yield feeds, labels
