"""Evaluate a converted SNN at several T from one simulation up to the largest T.

The graphs come from snn/simulate.py; this module only runs them and scores (scoring.py).
Unrolled: the SNN runs once at T_max with the readout's per-step tensors fetched; running sums give
the readout of any window of steps D+1..T, and the head (the part after the readout) runs on each.
Looped: the loop emits its accumulated readout after every iteration. Early exit, or a T that is
not a multiple of the chunk: one run per T.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from . import runtime, scoring
from .errors import UserError
from .snn import simulate
from .snn.info import SNNInfo
from .snn.loop import STEPS_OUTPUT

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    samples: int = 0
    ann_accuracy: float | None = None
    rows: list = field(default_factory=list)   # dicts: T, accuracy, agreement, rel_error, sops, ...
    ann_macs: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"samples": self.samples, "ann": {"accuracy": self.ann_accuracy},
                "snn": [{k: r[k] for k in ("T", "accuracy", "agreement", "rel_error")} for r in self.rows]}


def score_output(model: onnx.ModelProto) -> str:
    """The output compared across T: the first float tensor output of rank >= 2 (class scores),
    else the first tensor output (scikit-learn's label when its probabilities are a ZipMap
    sequence of maps). Outputs that are not tensors are never scored."""
    tensors = [o for o in model.graph.output if o.type.HasField("tensor_type")]
    for out in tensors:
        tt = out.type.tensor_type
        if tt.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16) \
                and tt.HasField("shape") and len(tt.shape.dim) >= 2:
            return out.name
    if not tensors:
        raise UserError("the model has no tensor output to score")
    return tensors[0].name


def simulation_batch(largest_activation: int, t_max: int, budget_mb: float = 2048) -> int:
    """Samples per unrolled simulation batch so that T_max x batch x the largest activation stays
    within `budget_mb`, counting eight float32 copies alive at once (ResNet-32 at T=128: 32 samples,
    2.6 GB peak RSS for the whole eval); at most 64."""
    if not largest_activation:
        return 16
    per_sample_mb = 8 * t_max * largest_activation * 4 / 2 ** 20
    return int(max(1, min(64, budget_mb // max(per_sample_mb, 1e-9))))


def auto_batch_size(info: SNNInfo, t_max: int, budget_mb: float = 2048) -> int:
    """Simulation batch for a converted model (see simulation_batch); looped models use 16."""
    if info.looped:
        return 16
    return simulation_batch(info.costs.get("largest_activation", 0), t_max, budget_mb)


def default_timesteps(info: SNNInfo) -> list:
    """T/4, T/2 and T of a converted model, those above its readout delay."""
    t = info.timesteps
    return sorted({x for x in (t // 4, t // 2, t) if x > info.delay})


def running_sums(step_tensors, t_max: int, batch: int) -> list:
    """Per readout, float64 running sums over the steps of a [T*N, ...] tensor with a leading zero
    row: S[t] - S[d] is the sum over steps d+1..t."""
    return [np.concatenate([np.zeros((1, batch) + s.shape[1:]),
                            np.cumsum(s.reshape((t_max, batch) + s.shape[1:]).astype(np.float64), axis=0)])
            for s in step_tensors]


def _inputs(sess) -> set:
    return {i.name for i in sess.get_inputs()}


class _OneSimulation:
    """A simulation graph run once per batch up to T_max, and the head that turns each window's
    averaged readout into the model's outputs."""

    def __init__(self, snn, info: SNNInfo, windows, sim_model, threads: int):
        self.info, self.windows, self.t_max = info, windows, max(t for t, _ in windows)
        self.out_name = score_output(snn)
        self.sim = runtime.session(sim_model, threads, in_order=True)
        self.head = runtime.session(simulate.head(snn, info, self.out_name), threads)
        self.sim_in, self.head_in = _inputs(self.sim), _inputs(self.head)
        self.fanout = info.costs.get("fanout", {})

    def _sops(self, cum, index: int):
        return sum(c[index] * self.fanout.get(name, 0.0) for name, c in cum) if self.counts else None


class _Unrolled(_OneSimulation):
    """One unrolled simulation at T_max per batch; any window (T, D) read from running sums."""

    def __init__(self, snn, info: SNNInfo, windows, spike_counts: bool, threads: int):
        model, self.counts = simulate.unrolled_steps(snn, info, max(t for t, _ in windows), spike_counts)
        super().__init__(snn, info, windows, model, threads)

    def __call__(self, feeds):
        feeds = {k: v for k, v in feeds.items() if k in self.sim_in}
        batch = len(next(iter(feeds.values())))
        names = [r["steps"] for r in self.info.readouts] + [c for _, c in self.counts]
        values = runtime.run_checked(self.sim, names, feeds, "evaluation")
        steps, spike_counts = values[:len(self.info.readouts)], values[len(self.info.readouts):]
        cum = [(name, np.cumsum(per_step.astype(np.float64))) for (name, _), per_step in zip(self.counts, spike_counts)]
        sums = running_sums(steps, self.t_max, batch)
        base = {k: v for k, v in feeds.items() if k in self.head_in}
        for t, d in self.windows:
            head_feeds = dict(base)
            for r, s in zip(self.info.readouts, sums):
                head_feeds[r["mean"]] = ((s[t] - s[d]) / (t - d)).astype(np.float32)
            sops = self._sops(cum, t - 1)
            yield (t, d), self.head.run([self.out_name], head_feeds)[0], {"sops": sops}


class _History(_OneSimulation):
    """One looped simulation at T_max per batch; the loop's sums after each iteration give every T
    that is a multiple of the chunk (D is the model's)."""

    def __init__(self, snn, info: SNNInfo, windows, threads: int):
        model, self.counts, self.histories = simulate.loop_history(snn, info, max(t for t, _ in windows))
        super().__init__(snn, info, windows, model, threads)

    def __call__(self, feeds):
        feeds = {k: v for k, v in feeds.items() if k in self.sim_in}
        values = runtime.run_checked(self.sim, self.histories + [c for _, c in self.counts], feeds, "evaluation")
        sums = [s.astype(np.float64) for s in values[:len(self.histories)]]
        cum = [(name, np.cumsum(v.astype(np.float64))) for (name, _), v in zip(self.counts, values[len(self.histories):])]
        base = {k: v for k, v in feeds.items() if k in self.head_in}
        k = self.info.chunk
        for t, d in self.windows:
            head_feeds = dict(base)
            for r, s in zip(self.info.readouts, sums):
                head_feeds[r["mean"]] = (s[t // k - 1] / (t - d)).astype(np.float32)
            sops = self._sops(cum, t // k - 1)
            yield (t, d), self.head.run([self.out_name], head_feeds)[0], {"sops": sops}


class _PerT:
    """Early exit (the model decides its steps) or T off the chunk grid: one run per T."""

    def __init__(self, snn, info: SNNInfo, windows, threads: int):
        self.windows = windows
        self.sessions = {t: runtime.session(simulate.with_timesteps(snn, info, t), threads) for t, _ in windows}
        self.out_name = score_output(snn)
        self.has_steps = any(o.name == STEPS_OUTPUT for o in snn.graph.output)
        self.names = [self.out_name] + ([STEPS_OUTPUT] if self.has_steps else [])
        self.inputs = _inputs(next(iter(self.sessions.values())))

    def __call__(self, feeds):
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        for t, d in self.windows:
            values = runtime.run_checked(self.sessions[t], self.names, feeds, "evaluation")
            yield (t, d), values[0], {"steps_used": values[1] if self.has_steps else None}


def window_scores(snn: onnx.ModelProto, info: SNNInfo, windows, batches, ann: onnx.ModelProto | None = None,
                  spike_counts: bool = True, threads: int = 0, desc: str | None = None,
                  total: int | None = None) -> tuple:
    """(Scores, sops measured, steps measured) of `snn` for each (T, D) window over `batches`."""
    windows = sorted(set(windows))
    per_t = info.looped and (info.early_exit is not None or not info.readouts
                             or any(t % info.chunk for t, _ in windows))
    if info.looped and any(d != info.delay for _, d in windows):
        raise UserError("a looped model averages from its own delay only; evaluate other delays unrolled")
    if per_t:
        outputs = _PerT(snn, info, windows, threads)
    elif info.looped:
        outputs = _History(snn, info, windows, threads)
    else:
        outputs = _Unrolled(snn, info, windows, spike_counts, threads)
    ann_sess = None
    if ann is not None:
        ann_sess = runtime.session(ann, threads)
        missing = sorted(_inputs(ann_sess) - {i.name for i in snn.graph.input})
        if missing:
            raise UserError(f"--ann: its input(s) {', '.join(missing)} are not inputs of the SNN; "
                            "is it the model that was converted?")
    bar = None
    if desc:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=desc, unit="img", leave=False, disable=None)
    scores = scoring.score(batches, outputs, windows, ann_sess, score_output(snn), bar)
    if scores.n == 0:
        raise UserError("evaluation received no data")
    return scores, bool(getattr(outputs, "counts", None)), per_t and getattr(outputs, "has_steps", False)


def evaluate(snn: onnx.ModelProto, batches, timesteps, ann: onnx.ModelProto | None = None,
             progress: bool = False, total: int | None = None, threads: int = 0) -> EvalResult:
    """Accuracy, agreement, relative error and SOPs of `snn` at each T (averaging from its delay)."""
    info = SNNInfo.from_metadata(snn)
    ts = sorted(set(int(t) for t in timesteps))
    if not ts or ts[0] <= info.delay:
        raise UserError(f"--timesteps: every T must exceed the model's delay D={info.delay}")
    start = time.perf_counter()
    windows = [(t, info.delay) for t in ts]
    scores, sops, steps = window_scores(snn, info, windows, batches, ann, threads=threads, total=total,
                                        desc=f"evaluating (T up to {ts[-1]})" if progress else None)
    res = EvalResult(samples=scores.n, ann_accuracy=scores.ann_accuracy(),
                     ann_macs=float(info.costs.get("ann_macs", 0.0)), seconds=time.perf_counter() - start)
    for key in windows:
        tally = scores.tally[key]
        res.rows.append({"T": key[0], "accuracy": scores.accuracy(key), "agreement": scores.agreement(key),
                         "rel_error": scores.rel_error(key), "sops": tally.sops / scores.n if sops else None,
                         "pre_macs": float(info.costs.get("pre_macs", 0.0)),
                         "steps_used": tally.steps / scores.n if steps else None})
    return res
