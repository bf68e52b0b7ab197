"""The simulations evaluation runs: a converted SNN's simulation graph (snn/simulate.py) run in
onnxruntime over a batch, yielding its outputs for every (T, D) window asked for.

    Unrolled   the unrolled SNN once at T_max; any window read from running sums of the readout
    Sliced     the same in slices of steps that fit the memory budget, states carried between runs
    History    a looped SNN once at T_max; the loop's sums after each iteration give each T
    PerT       one run per window (early exit, T off the chunk grid, other delays of a looped model)

evaluate.py scores what they yield (scoring.py).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx

from .. import runtime
from ..errors import UserError, param
from ..runtime import memory as mem
from ..runtime.memory import MemoryBudget
from . import simulate
from .info import SNNInfo
from .loop import STEPS_OUTPUT

log = logging.getLogger(__name__)


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


def running_sums(step_tensors, t_max: int, batch: int) -> list:
    """Per readout, float64 running sums over the steps of a [T*N, ...] tensor with a leading zero
    row: S[t] - S[d] is the sum over steps d+1..t."""
    return [np.concatenate([np.zeros((1, batch) + s.shape[1:]),
                            np.cumsum(s.reshape((t_max, batch) + s.shape[1:]).astype(np.float64), axis=0)])
            for s in step_tensors]


def input_names(sess) -> set:
    return {i.name for i in sess.get_inputs()}


class OneSimulation:
    """A simulation graph run once per batch up to T_max, and the head that turns each window's
    averaged readout into the model's outputs."""

    def __init__(self, snn, info: SNNInfo, windows, sim_model, threads: int, layers=None, out_names=None,
                 arena: bool = True):
        self.info, self.windows, self.t_max = info, windows, max(t for t, _ in windows)
        self.layers = layers
        self.out_names = out_names or [score_output(snn)]
        self.sim = runtime.session(sim_model, threads, in_order=True, arena=arena)
        self.head = runtime.session(simulate.head(snn, info, self.out_names), threads)
        self.sim_in, self.head_in = input_names(self.sim), input_names(self.head)
        self.fanout = info.costs.get("fanout", {})

    def _outputs(self, head_feeds) -> dict:
        return dict(zip(self.out_names, self.head.run(self.out_names, head_feeds)))

    def _sops(self, cum, index: int):
        return sum(c[index] * self.fanout.get(name, 0.0) for name, c in cum) if self.counts else None


class Unrolled(OneSimulation):
    """One unrolled simulation at T_max per batch; any window (T, D) read from running sums.

    `rider`: work that rides along in the same simulation (the correction, correction.Corrector):
    `rider.rewrite(model)` -> (model, extra output names) changes the simulation graph,
    `rider.feeds(feeds)` gives its extra inputs for a batch, and its outputs for the batch are left
    in `rider_values` (evaluate.window_scores hands them to `rider.collect` in batch order)."""

    def __init__(self, snn, info: SNNInfo, windows, spike_counts: bool, threads: int, layers=None, rider=None,
                 out_names=None):
        model, self.counts, self.stats = simulate.unrolled_steps(snn, info, max(t for t, _ in windows),
                                                                 spike_counts, layers is not None)
        self.rider, self.rider_names, self.rider_values = rider, [], None
        if rider is not None:
            model, self.rider_names = rider.rewrite(model)
        super().__init__(snn, info, windows, model, threads, layers, out_names)

    def __call__(self, feeds):
        run_feeds = {k: v for k, v in feeds.items() if k in self.sim_in}
        batch = len(next(iter(run_feeds.values())))
        if self.rider is not None:
            run_feeds.update(self.rider.feeds(feeds))
        n_read, n_counts = len(self.info.readouts), len(self.counts)
        names = [r["steps"] for r in self.info.readouts] + [c for _, c in self.counts] + \
            [x for _, total, fired in self.stats for x in (total, fired)]
        values = runtime.run_checked(self.sim, names + self.rider_names, run_feeds, "evaluation")
        if self.rider is not None:
            self.rider_values = values[len(names):]
            values = values[:len(names)]
        steps, spike_counts = values[:n_read], values[n_read:n_read + n_counts]
        if self.layers is not None:
            rest = values[n_read + n_counts:]
            self.layers.add(feeds, {name: (rest[2 * i], rest[2 * i + 1]) for i, (name, _, _) in enumerate(self.stats)})
        cum = [(name, np.cumsum(per_step.astype(np.float64))) for (name, _), per_step in zip(self.counts, spike_counts)]
        sums = running_sums(steps, self.t_max, batch)
        base = {k: v for k, v in feeds.items() if k in self.head_in}
        for t, d in self.windows:
            head_feeds = dict(base)
            for r, s in zip(self.info.readouts, sums):
                head_feeds[r["mean"]] = ((s[t] - s[d]) / (t - d)).astype(np.float32)
            sops = self._sops(cum, t - 1)
            yield (t, d), self._outputs(head_feeds), {"sops": sops}


class Sliced(OneSimulation):
    """The unrolled simulation at T_max run `steps` steps at a time, each run starting from the
    states the previous one ended with (simulate.carried_states): memory of `steps` steps instead
    of T_max, for a sample that does not fit the budget at T_max (slice_steps). Readout sums are
    kept only at the windows' bounds. Same windows, SOPs and statistics as Unrolled; the neurons
    that carry a state run in onnxruntime's plain layout (runtime/layout.py)."""

    def __init__(self, snn, info: SNNInfo, windows, spike_counts: bool, threads: int, layers=None, steps: int = 1,
                 out_names=None):
        t_max = max(t for t, _ in windows)
        self.steps = min(steps, t_max)
        self.snn, self.spike_counts, self.threads = snn, spike_counts, threads
        self.sessions = {}
        model, self.counts, self.stats = simulate.unrolled_steps(snn, info, self.steps, spike_counts,
                                                                 layers is not None)
        first, later, self.pairs = simulate.carried_states(model)
        super().__init__(snn, info, windows, first, threads, layers, out_names, arena=False)
        self.sessions[self.steps] = (self.sim, runtime.session(later, threads, in_order=True, arena=False))
        self.bounds = {x for w in windows for x in w}

    def _session(self, n: int, later: bool):
        if n not in self.sessions:
            model, _, _ = simulate.unrolled_steps(self.snn, self.info, n, self.spike_counts, self.layers is not None)
            first, second, _ = simulate.carried_states(model)
            self.sessions[n] = (runtime.session(first, self.threads, in_order=True, arena=False),
                                runtime.session(second, self.threads, in_order=True, arena=False))
        return self.sessions[n][int(later)]

    def __call__(self, feeds):
        run_feeds = {k: v for k, v in feeds.items() if k in self.sim_in}
        batch = len(next(iter(run_feeds.values())))
        n_read, n_counts = len(self.info.readouts), len(self.counts)
        names = [r["steps"] for r in self.info.readouts] + [c for _, c in self.counts] + \
            [x for _, total, fired in self.stats for x in (total, fired)]
        states = [out for _, out in self.pairs]
        at = [{0: None} for _ in self.info.readouts]     # readout sums at the windows' bounds
        totals = [None] * n_read
        per_step = [[] for _ in self.counts]
        layer_sums = [[0.0, 0.0] for _ in self.stats]
        carried, start = None, 0
        while start < self.t_max:
            n = min(self.steps, self.t_max - start)
            sess = self._session(n, carried is not None)
            step_feeds = dict(run_feeds)
            if carried is not None:
                step_feeds.update({name: v for (name, _), v in zip(self.pairs, carried)})
            values = runtime.run_checked(sess, names + states, step_feeds, "evaluation")
            carried = values[len(names):]
            for i, steps in enumerate(values[:n_read]):
                x = steps.reshape((n, batch) + steps.shape[1:])
                if totals[i] is None:
                    totals[i] = np.zeros(x.shape[1:])
                for j in range(n):           # step by step in float64: the additions of running_sums
                    totals[i] += x[j]
                    if start + j + 1 in self.bounds:
                        at[i][start + j + 1] = totals[i].copy()
            for i, v in enumerate(values[n_read:n_read + n_counts]):
                per_step[i].append(v)
            for i in range(len(self.stats)):
                for j in (0, 1):
                    layer_sums[i][j] = layer_sums[i][j] + values[n_read + n_counts + 2 * i + j].astype(np.float64)
            start += n
        if self.layers is not None:
            self.layers.add(feeds, {name: tuple(layer_sums[i]) for i, (name, _, _) in enumerate(self.stats)})
        cum = [(name, np.cumsum(np.concatenate(v).astype(np.float64))) for (name, _), v in zip(self.counts, per_step)]
        base = {k: v for k, v in feeds.items() if k in self.head_in}
        for t, d in self.windows:
            head_feeds = dict(base)
            for r, sums, total in zip(self.info.readouts, at, totals):
                low = sums[d] if d else np.zeros_like(total)
                head_feeds[r["mean"]] = ((sums[t] - low) / (t - d)).astype(np.float32)
            sops = self._sops(cum, t - 1)
            yield (t, d), self._outputs(head_feeds), {"sops": sops}


MAX_SLICES = 10000     # more runs per batch than this is a T no one can wait for: refused


SLICE_WEIGHT_COPIES = 12  # sliced runs: the model as the simulation sessions, their rewrites, the head and the ANN hold it


def slice_steps(info: SNNInfo, t_max: int, memory: MemoryBudget | None, model_bytes: int = 0) -> int | None:
    """Steps per run when one sample of an unrolled model's simulation at `t_max` does not fit
    the memory budget (then Sliced runs it in slices of that many steps), else None. The slices
    get the budget less SLICE_WEIGHT_COPIES copies of the model (`model_bytes`): the graphs and
    weights the sessions and their rewrites hold, a fixed share the per-step estimate leaves out
    (RetinaNet's heads, a 244 MB model, at T=256: 11.9 GB against a 10.5 GiB budget with none
    reserved, 12.3 GB with 4 copies, 9.1 GB within a 10.2 GiB budget with 12)."""
    largest = info.costs.get("largest_activation", 0)
    if info.looped or not largest or memory is None:
        return None
    per_step = mem.simulation_sample_bytes(largest, 1)
    if memory.fits(per_step * t_max):
        return None
    memory = MemoryBudget(max(memory.bytes - SLICE_WEIGHT_COPIES * model_bytes, 1), memory.source)
    if info.portable:
        log.warning("memory budget %s: one sample at T=%d is estimated at %.1f GiB; a portable unrolled model "
                    "runs all its steps at once (convert without --portable, or with --form loop, to bound it)",
                    memory.describe(), t_max, per_step * t_max / 2 ** 30)
        return None
    most = max(1, int(memory.bytes // per_step))
    runs = -(-t_max // most)
    if runs > MAX_SLICES:
        raise UserError(f"{param('timesteps')} {t_max}: one sample needs {per_step * t_max / 2 ** 30:.3g} GiB at this "
                        f"T; in "
                        f"slices that fit {param('max_memory')} ({memory.describe()}) it would take {runs} runs per "
                        f"batch; "
                        f"evaluate a smaller T or give more {param('max_memory')}")
    even = max(d for d in range(1, most + 1) if t_max % d == 0)
    if 2 * even >= most:           # slices that divide T: one pair of sessions
        return even
    return -(-t_max // runs)       # equal slices, the last shorter


class History(OneSimulation):
    """One looped simulation at T_max per batch; the loop's sums after each iteration give every T
    that is a multiple of the chunk (D is the model's)."""

    def __init__(self, snn, info: SNNInfo, windows, threads: int, layers=None, out_names=None):
        model, self.counts, self.histories, self.stats = simulate.loop_history(
            snn, info, max(t for t, _ in windows), layers is not None)
        super().__init__(snn, info, windows, model, threads, layers, out_names)

    def __call__(self, feeds):
        feeds = {k: v for k, v in feeds.items() if k in self.sim_in}
        n_hist, n_counts = len(self.histories), len(self.counts)
        names = self.histories + [c for _, c in self.counts] + [x for _, total, fired in self.stats
                                                                   for x in (total, fired)]
        values = runtime.run_checked(self.sim, names, feeds, "evaluation")
        sums = [s.astype(np.float64) for s in values[:n_hist]]
        cum = [(name, np.cumsum(v.astype(np.float64))) for (name, _), v in zip(self.counts, values[n_hist:n_hist + n_counts])]
        if self.layers is not None:   # per-iteration sums: the first T_max / K iterations
            rest, used = values[n_hist + n_counts:], self.t_max // self.info.chunk
            self.layers.add(feeds, {name: (rest[2 * i][:used].sum(0), rest[2 * i + 1][:used].sum(0))
                                    for i, (name, _, _) in enumerate(self.stats)})
        base = {k: v for k, v in feeds.items() if k in self.head_in}
        k = self.info.chunk
        for t, d in self.windows:
            head_feeds = dict(base)
            for r, s in zip(self.info.readouts, sums):
                head_feeds[r["mean"]] = (s[t // k - 1] / (t - d)).astype(np.float32)
            sops = self._sops(cum, t // k - 1)
            yield (t, d), self._outputs(head_feeds), {"sops": sops}


class PerT:
    """Early exit (the model decides its steps), a T off the chunk grid, or delays other than the
    model's (looped models): one run per window."""

    def __init__(self, snn, info: SNNInfo, windows, threads: int, out_names=None):
        self.windows = windows
        self.sessions = {(t, d): runtime.session(simulate.with_timesteps(snn, info, t, d), threads) for t, d in windows}
        self.out_names = out_names or [score_output(snn)]
        self.has_steps = any(o.name == STEPS_OUTPUT for o in snn.graph.output)
        self.names = self.out_names + ([STEPS_OUTPUT] if self.has_steps else [])
        self.inputs = input_names(next(iter(self.sessions.values())))

    def __call__(self, feeds):
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        n = len(self.out_names)
        for key in self.windows:
            values = runtime.run_checked(self.sessions[key], self.names, feeds, "evaluation")
            yield key, dict(zip(self.out_names, values[:n])), {"steps_used": values[n] if self.has_steps else None}
