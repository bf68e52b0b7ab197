"""Threshold calibration: stream batches through the probed model in onnxruntime, update in NumPy.

Methods (docs/method/how-it-works.md, step 3):
- ltb: channel-wise local threshold balancing (Bu et al.): theta += lr * 2 * mean((x-theta)H(x-theta)).
- ltb-layer: the same with one theta per layer.
- max: the largest activation seen (max-norm), one theta per layer.
- percentile: robust-norm, one theta per layer. Streaming estimate: the mean over batches of each
  batch's exact p-th percentile of positive activations (computed in the graph with TopK).

Rounds (`--round-batches K`): LTB measures K batches at the same theta and applies one update,
their per-channel means averaged weighted by their sample counts: one update on the union of the
K batches (exactly for the first layer; a deeper layer's inputs are clipped at the thresholds
each batch's own update gives the layers before it, LTB's in-batch clip, so there it is close). K = 1 is the sequential LTB above; a round's batches can run on
several workers at once (cluster/), and the result depends only on K and the seed. With the same
--iters (batches seen) there are K times fewer updates of the same size (--lr), each on K times
as many samples. max and percentile do not depend on theta: K changes nothing for them.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

from . import probes
from .. import runtime
from ..graph.analyse import Analysis, as_analysis
from ..config import CalibConfig
from ..errors import UserError
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

    def update_round(self, outs: list, sizes: list):
        """One update from a round's batches measured at the same theta (count-weighted means)."""
        if len(outs) == 1:
            return self.update(outs[0])
        total = float(sum(sizes))
        merged = {}
        for p in self.probes:
            merged[p.stat] = (sum(np.asarray(o[p.stat], np.float64) * n for o, n in zip(outs, sizes))
                              / total).astype(np.float32)
            for name in (p.clip_error, p.activity):
                if name:
                    merged[name] = sum(float(o[name]) * n for o, n in zip(outs, sizes)) / total
        return self.update(merged)

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

    def update_round(self, outs: list, sizes: list):
        err = None
        for o in outs:          # theta-independent: batch by batch, in order
            err = self.update(o)
        return err

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


class MeasureJob:
    """The probed model measuring one batch at given thresholds (`build`: its session, here or on
    a cluster's workers): feeds + the round's threshold feeds -> the statistics to fetch."""

    def __init__(self, probe_model, fetch: list):
        self.probe_model, self.fetch = probe_model, fetch

    def build(self, threads: int = 0):
        sess = runtime.session(self.probe_model, threads=threads)
        inputs = {i.name for i in sess.get_inputs()}

        def measure(feeds: dict, labels=None, theta=None) -> tuple:
            """(the statistics by name, samples in the batch)."""
            run_feeds = {k: v for k, v in feeds.items() if k in inputs}
            size = len(next(iter(v for v in run_feeds.values() if np.ndim(v))))
            run_feeds.update(theta or {})
            return dict(zip(self.fetch, runtime.run_checked(sess, self.fetch, run_feeds, "calibration"))), size
        return measure


def _rounds(batches, k: int):
    """Lists of up to `k` consecutive items of `batches`."""
    group = []
    for item in batches:
        group.append(item)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


def calibrate(analysis: Analysis, batches, config: CalibConfig, progress: bool = False, threads: int = 0,
              snapshots=(), engine=None, shards=None, nonfinite=None):
    """Thresholds for every activation of the analysed model from an iterable of feed dicts, in
    rounds of config.round_batches batches (one update each). `snapshots`: iteration counts (batches)
    at which the thresholds are also kept (in `stats["snapshots"]`, iteration count -> Thresholds),
    for choosing the calibration length afterwards (tuning.py); with rounds, after the round that
    reaches them. `engine`, `shards`: a cluster (cluster/) and the batches as (work.Shard list,
    work.Reading or None), in place of `batches`: each round's batches run on its workers; the
    batches they skip for NaN/Inf are counted in `nonfinite` (batches.NonFinite)."""
    analysis = as_analysis(analysis)
    probe_model, probe_list = probes.build(analysis, config.method, config.percentile)
    fetch = sorted({p.stat for p in probe_list} | {p.clip_error for p in probe_list if p.clip_error}
                   | {p.activity for p in probe_list if p.activity})
    state = _state(config, probe_list)
    # a round's batches are measured at the same theta; max and percentile do not depend on it, so on
    # a cluster all their batches are in flight at once (the result is the same, batch by batch in order)
    k = config.round_batches if isinstance(state, _Ltb) else 1
    job = MeasureJob(probe_model, fetch)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=config.iters, desc=f"calibrating ({config.method})", unit="batch", leave=False, disable=None)
    iters, samples, err = 0, 0, None
    kept = {}
    session_time = [0.0]      # onnxruntime's seconds here (on a cluster: the rounds' wall time)
    started = time.perf_counter()
    rounds = _rounds_here(job, state, batches, k, threads, session_time) if engine is None else \
        _rounds_on(engine, job, state, shards, k, nonfinite)
    for measured in rounds:
        if not measured:
            continue
        err = state.update_round([m[0] for m in measured], [m[1] for m in measured])
        before = iters
        iters += len(measured)
        samples += sum(m[1] for m in measured)
        for point in snapshots:
            if before < point <= iters:
                kept[point] = Thresholds(state.result(), config.method, {"iters": point, "lr": config.lr})
        if bar is not None:
            bar.update(len(measured))
            if err is not None:
                bar.set_postfix(clip_error=f"{err:.4f}")
    run_time = session_time[0] if engine is None else time.perf_counter() - started
    if bar is not None:
        bar.close()
    if iters == 0:
        raise UserError("calibration received no data")
    info = _info(config, iters, samples, err)
    log.info("calibrated %d activations in %d batches (%.2fs in onnxruntime)", len(probe_list), iters, run_time)
    kept[iters] = Thresholds(state.result(), config.method, info)
    th = Thresholds(state.result(), config.method, info,
                    stats={"session_seconds": run_time, "snapshots": {k: v.validate("calibration")
                                                                      for k, v in sorted(kept.items())}})
    return th.validate("calibration")


def _state(config: CalibConfig, probe_list):
    """The method's running state: LTB's thresholds, or max/percentile statistics."""
    if config.method in ("ltb", "ltb-layer"):
        return _Ltb(probe_list, config.lr)
    if config.method == "max":
        return _Max(probe_list)
    return _Percentile(probe_list)


def _rounds_here(job, state, batches, k: int, threads: int, session_time: list):
    """Rounds of k measured batches, each round at the thresholds of the update before it."""
    measure, measured = job.build(threads), []
    theta = state.feeds()
    for feeds in batches:
        start = time.perf_counter()
        measured.append(measure(feeds, theta=theta))
        session_time[0] += time.perf_counter() - start
        if len(measured) == k:
            yield measured
            measured, theta = [], state.feeds()      # the round's update is applied by now
    if measured:
        yield measured


def _rounds_on(engine, job, state, shards, k: int, nonfinite):
    """The same rounds on a cluster's workers (the batches they skip for NaN/Inf counted)."""
    def count(skipped):
        if skipped and nonfinite is not None:
            nonfinite.skipped += skipped

    shard_list, reading = shards
    with engine.job("calibration", job, reading) as run:
        if not isinstance(state, _Ltb):
            for _, value, skipped in run(shard_list):
                count(skipped)
                yield [value] if value is not None else []
            return
        for group in _rounds(shard_list, k):
            theta = state.feeds()
            for shard in group:
                shard.extra = {"theta": theta}
            got = []
            for _, value, skipped in run(group):
                count(skipped)
                if value is not None:
                    got.append(value)
            yield got


def _info(config: CalibConfig, iters: int, samples: int, err) -> dict:
    """What the thresholds record of their calibration."""
    info = {"iters": iters, "samples": samples, "batch_size": config.batch_size, "lr": config.lr,
            "seed": config.seed, "augment": config.augment}
    if config.round_batches != 1:
        info["round_batches"] = config.round_batches
    if config.method == "percentile":
        info["percentile"] = config.percentile
    if err is not None:
        info["final_clip_error"] = err
    return info


def batches_needed(config: CalibConfig, n_samples: int | None) -> int:
    """max/percentile see each sample once at most; LTB runs all --iters batches."""
    if config.method in ("max", "percentile") and n_samples:
        return min(config.iters, math.ceil(n_samples / (config.batch_size or 100)))
    return config.iters
