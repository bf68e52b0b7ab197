"""Threshold calibration: stream batches through the probed model in onnxruntime, update in NumPy.

Methods (README "How it works", step 3):
- ltb: channel-wise local threshold balancing (Bu et al.): theta += lr * 2 * mean((x-theta)H(x-theta)).
- ltb-layer: the same with one theta per layer.
- max: the largest activation seen (max-norm), one theta per layer.
- percentile: robust-norm, one theta per layer. Streaming estimate: the mean over batches of each
  batch's exact p-th percentile of positive activations (computed in the graph with TopK).
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

from . import probes, runtime
from .analyse import Analysis, as_analysis
from .config import CalibConfig
from .errors import UserError
from .thresholds import Thresholds

log = logging.getLogger(__name__)


class _Ltb:
    def __init__(self, probe_list, lr: float):
        self.theta = {p.name: np.zeros(p.theta_shape, np.float32) for p in probe_list}
        self.step = np.float32(2.0 * lr)
        self.probes = probe_list

    def feeds(self):
        f = {p.theta_input: self.theta[p.name] for p in self.probes}
        f[probes.LR_INPUT] = np.asarray(self.step, np.float32)
        return f

    def update(self, outs: dict):
        errs = []
        for p in self.probes:
            grad = np.asarray(outs[p.stat], np.float32).reshape(p.theta_shape)
            theta = self.theta[p.name] + self.step * grad
            if p.cap is not None:
                theta = np.minimum(theta, np.float32(p.cap))
            self.theta[p.name] = theta.astype(np.float32)
            act = float(outs[p.activity])
            if act > 0:
                errs.append(float(outs[p.clip_error]) / act)
        return float(np.mean(errs)) if errs else 0.0

    def result(self):
        return {k: v.reshape(-1).copy() for k, v in self.theta.items()}


class _Max:
    def __init__(self, probe_list):
        self.theta = {p.name: np.float32(0) for p in probe_list}
        self.probes = probe_list

    def feeds(self):
        return {}

    def update(self, outs):
        for p in self.probes:
            self.theta[p.name] = max(self.theta[p.name], np.float32(outs[p.stat]))
        return None

    def result(self):
        return {p.name: np.asarray([min(self.theta[p.name], p.cap) if p.cap else self.theta[p.name]],
                                   np.float32) for p in self.probes}


class _Percentile(_Max):
    def __init__(self, probe_list):
        super().__init__(probe_list)
        self.sum = {p.name: 0.0 for p in probe_list}
        self.count = 0

    def update(self, outs):
        self.count += 1
        for p in self.probes:
            self.sum[p.name] += max(0.0, float(outs[p.stat]))
            self.theta[p.name] = np.float32(self.sum[p.name] / self.count)
        return None


def calibrate(analysis: Analysis, batches, config: CalibConfig, progress: bool = False, threads: int = 0,
              snapshots=()):
    """Thresholds for every activation of the analysed model from an iterable of feed dicts.
    `snapshots`: iteration counts at which the thresholds are also kept (in `stats["snapshots"]`,
    iteration count -> Thresholds), for choosing the calibration length afterwards (tuning.py)."""
    analysis = as_analysis(analysis)
    probe_model, probe_list = probes.build(analysis, config.method, config.percentile)
    sess = runtime.session(probe_model, threads=threads)
    input_names = {i.name for i in sess.get_inputs()}
    fetch = sorted({p.stat for p in probe_list} | {p.clip_error for p in probe_list if p.clip_error}
                   | {p.activity for p in probe_list if p.activity})
    if config.method in ("ltb", "ltb-layer"):
        state = _Ltb(probe_list, config.lr)
    elif config.method == "max":
        state = _Max(probe_list)
    else:
        state = _Percentile(probe_list)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=config.iters, desc=f"calibrating ({config.method})", unit="batch", leave=False, disable=None)
    run_time, iters, samples, err = 0.0, 0, 0, None
    kept = {}
    for feeds in batches:
        feeds = {k: v for k, v in feeds.items() if k in input_names}
        feeds.update(state.feeds())
        start = time.perf_counter()
        values = runtime.run_checked(sess, fetch, feeds, "calibration")
        run_time += time.perf_counter() - start
        err = state.update(dict(zip(fetch, values)))
        iters += 1
        samples += len(next(iter(v for k, v in feeds.items() if k in input_names and np.ndim(v))))
        if iters in snapshots:
            kept[iters] = Thresholds(state.result(), config.method, {"iters": iters, "lr": config.lr})
        if bar is not None:
            bar.update(1)
            if err is not None:
                bar.set_postfix(clip_error=f"{err:.4f}")
    if bar is not None:
        bar.close()
    if iters == 0:
        raise UserError("calibration received no data")
    info = {"iters": iters, "samples": samples, "batch_size": config.batch_size, "lr": config.lr,
            "seed": config.seed, "augment": config.augment}
    if config.method == "percentile":
        info["percentile"] = config.percentile
    if err is not None:
        info["final_clip_error"] = err
    log.info("calibrated %d activations in %d batches (%.2fs in onnxruntime)", len(probe_list), iters, run_time)
    kept[iters] = Thresholds(state.result(), config.method, info)
    th = Thresholds(state.result(), config.method, info,
                    stats={"session_seconds": run_time, "snapshots": {k: v.validate("calibration")
                                                                      for k, v in sorted(kept.items())}})
    return th.validate("calibration")


def batches_needed(config: CalibConfig, n_samples: int | None) -> int:
    """max/percentile see each sample once at most; LTB runs all --iters batches."""
    if config.method in ("max", "percentile") and n_samples:
        return min(config.iters, math.ceil(n_samples / (config.batch_size or 100)))
    return config.iters
