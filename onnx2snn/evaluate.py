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

from . import probes, runtime, scoring
from .analyse import as_analysis
from .errors import UserError
from .runtime import memory as mem
from .runtime.memory import MemoryBudget
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
    layers: list = field(default_factory=list)   # per-layer statistics at layers_T (see _LayerStats)
    layers_T: int | None = None
    report: dict | None = None                   # report.report_json of this result, when asked for
    batch_size: int | None = None                # samples per simulation batch (evaluate_file)
    sample_bytes: float | None = None            # the estimate of one sample's bytes it was chosen from
    memory: MemoryBudget | None = None           # the budget it was chosen in
    slice_steps: int | None = None               # steps per run when the unrolled simulation runs in slices
    task: str | None = None                      # the task scored (tasks.TaskSpec.name), None: top-1 if labels
    ann_metrics: dict | None = None              # the task's figures for the ANN (rows: "metrics" per T)
    delay_rule: str = "scaled"                   # how each row's "delay" was chosen: scaled, fixed, auto or own
    primary_key: str | None = None               # the task's headline figure in "metrics": top1, miou, map, psnr
    task_reason: str | None = None               # why that task (tasks.TaskSpec.reason)

    def primary(self, row=None):
        """The task's headline figure (top1, miou, map, psnr) of a row, or of the ANN."""
        figures = self.ann_metrics if row is None else row.get("metrics")
        if not figures:
            return row.get("accuracy") if row is not None else self.ann_accuracy
        return figures.get(self.primary_key)

    def to_json(self) -> dict:
        return {"samples": self.samples, "task": self.task,
                "ann": {"accuracy": self.ann_accuracy, "metrics": self.ann_metrics},
                "snn": [{k: r.get(k) for k in ("T", "delay", "accuracy", "agreement", "rel_error", "metrics")}
                        for r in self.rows]}


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


def simulation_batch(largest_activation: int, t_max: int, memory: MemoryBudget | None = None,
                     copies: int = mem.SIM_COPIES) -> int:
    """Samples per unrolled simulation batch whose estimated bytes (`copies` float32 copies of the
    largest activation per sample and step: runtime/memory.py) stay within the memory budget; at
    most 64."""
    if not largest_activation:
        return 16
    memory = memory or mem.budget()
    per_sample = mem.simulation_sample_bytes(largest_activation, t_max, copies)
    if not memory.fits(per_sample):     # the CLI says so too (eval: EvalResult.sample_bytes)
        log.info("memory budget %s: one sample of the unrolled simulation at T=%d is estimated at %.1f GiB; "
                 "one sample per batch, its steps run in slices that fit (slice_steps)", memory.describe(), t_max,
                 per_sample / 2 ** 30)
    return memory.samples(per_sample, 64)


def auto_batch_size(info: SNNInfo, t_max: int, memory: MemoryBudget | None = None) -> int:
    """Simulation batch for a converted model (see simulation_batch); looped models hold `chunk`
    steps at a time: up to 16 samples of those within the budget."""
    if info.looped:
        largest = info.costs.get("largest_activation", 0)
        return (memory or mem.budget()).samples(mem.simulation_sample_bytes(largest, info.chunk), 16) if largest else 16
    return simulation_batch(info.costs.get("largest_activation", 0), t_max, memory)


def default_timesteps(info: SNNInfo) -> list:
    """T/4, T/2 and T of a converted model (its delay scaled to each: window_delays)."""
    t = info.timesteps
    return sorted({x for x in (t // 4, t // 2, t) if x >= 1})


def running_sums(step_tensors, t_max: int, batch: int) -> list:
    """Per readout, float64 running sums over the steps of a [T*N, ...] tensor with a leading zero
    row: S[t] - S[d] is the sum over steps d+1..t."""
    return [np.concatenate([np.zeros((1, batch) + s.shape[1:]),
                            np.cumsum(s.reshape((t_max, batch) + s.shape[1:]).astype(np.float64), axis=0)])
            for s in step_tensors]


def _inputs(sess) -> set:
    return {i.name for i in sess.get_inputs()}


class _LayerStats:
    """Per layer at T: firing rate (spikes per neuron per step), the fractions of silent (no spike)
    and saturated (a spike at every step) neurons, and the rate error against the ANN's clipped
    activation (the probed ANN with the SNN's thresholds): sum |rate x theta - clip(a, 0, theta)| /
    sum |clip(a, 0, theta)| over neurons and samples."""

    def __init__(self, snn, info: SNNInfo, ann, t: int, threads: int):
        self.t, self.info = t, info
        self.tally = {n["name"]: {"spikes": 0.0, "count": 0, "samples": 0, "silent": 0, "saturated": 0, "err": 0.0,
                                  "ref": 0.0}
                      for n in info.neurons}
        self.thetas = simulate.neuron_thresholds(snn, info)
        self.tensor = {n["name"]: n["tensor"] for n in info.neurons}
        self.sess = None
        if ann is not None:
            analysis = as_analysis(ann)
            names = sorted({self.tensor[n] for n in self.thetas})
            theta_of = {n["source"]: self.thetas[n["name"]] for n in info.neurons if n["name"] in self.thetas}
            model, self.fixed = probes.clipped(analysis, theta_of, names)
            self.sess = runtime.session(model, threads)
            self.names = names
            self.inputs = _inputs(self.sess)

    def add(self, feeds: dict, per_neuron: dict) -> None:
        """per_neuron: name -> (summed weighted spikes, spike count), each [N * neurons], over T."""
        clipped = {}
        if self.sess is not None:
            run_feeds = {k: v for k, v in feeds.items() if k in self.inputs}
            run_feeds.update(self.fixed)
            clipped = dict(zip(self.names, runtime.run_checked(self.sess, self.names, run_feeds, "report")))
        batch = max((np.shape(v)[0] for v in feeds.values() if np.ndim(v)), default=1)
        for name, (total, fired) in per_neuron.items():
            tl = self.tally[name]
            tl["samples"] += batch
            tl["spikes"] += float(fired.sum())
            tl["count"] += fired.size
            tl["silent"] += int(np.sum(fired == 0))
            tl["saturated"] += int(np.sum(fired >= self.t))
            if self.tensor[name] in clipped:
                a = clipped[self.tensor[name]].astype(np.float64).reshape(-1)
                tl["err"] += float(np.abs(total.astype(np.float64) / self.t - a).sum())
                tl["ref"] += float(np.abs(a).sum())

    def rows(self) -> list:
        out = []
        for n in self.info.neurons:
            tl, theta = self.tally[n["name"]], self.thetas.get(n["name"], np.zeros(1, np.float32))
            count = max(tl["count"], 1)
            out.append({"name": n["name"], "role": n["role"], "neurons": tl["count"] // max(tl["samples"], 1),
                        "theta": {"mean": float(theta.mean()), "min": float(theta.min()), "max": float(theta.max()),
                                  "zero": int(np.sum(theta == 0)), "values": [float(v) for v in theta]},
                        "firing_rate": tl["spikes"] / (count * self.t), "silent": tl["silent"] / count,
                        "saturated": tl["saturated"] / count,
                        "rate_error": tl["err"] / tl["ref"] if self.sess is not None and tl["ref"] > 0 else None})
        return out


class _OneSimulation:
    """A simulation graph run once per batch up to T_max, and the head that turns each window's
    averaged readout into the model's outputs."""

    def __init__(self, snn, info: SNNInfo, windows, sim_model, threads: int, layers=None, out_names=None,
                 arena: bool = True):
        self.info, self.windows, self.t_max = info, windows, max(t for t, _ in windows)
        self.layers = layers
        self.out_names = out_names or [score_output(snn)]
        self.sim = runtime.session(sim_model, threads, in_order=True, arena=arena)
        self.head = runtime.session(simulate.head(snn, info, self.out_names), threads)
        self.sim_in, self.head_in = _inputs(self.sim), _inputs(self.head)
        self.fanout = info.costs.get("fanout", {})

    def _outputs(self, head_feeds) -> dict:
        return dict(zip(self.out_names, self.head.run(self.out_names, head_feeds)))

    def _sops(self, cum, index: int):
        return sum(c[index] * self.fanout.get(name, 0.0) for name, c in cum) if self.counts else None


class _Unrolled(_OneSimulation):
    """One unrolled simulation at T_max per batch; any window (T, D) read from running sums.

    `rider`: work that rides along in the same simulation (the correction, correction.Corrector):
    `rider.rewrite(model)` -> (model, extra output names) changes the simulation graph,
    `rider.feeds(feeds)` gives its extra inputs for a batch and `rider.collect(values, batch)` takes
    its outputs."""

    def __init__(self, snn, info: SNNInfo, windows, spike_counts: bool, threads: int, layers=None, rider=None,
                 out_names=None):
        model, self.counts, self.stats = simulate.unrolled_steps(snn, info, max(t for t, _ in windows),
                                                                 spike_counts, layers is not None)
        self.rider, self.rider_names = rider, []
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
            self.rider.collect(values[len(names):], batch)
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


class _Sliced(_OneSimulation):
    """The unrolled simulation at T_max run `steps` steps at a time, each run starting from the
    states the previous one ended with (simulate.carried_states): memory of `steps` steps instead
    of T_max, for a sample that does not fit the budget at T_max (slice_steps). Readout sums are
    kept only at the windows' bounds. Same windows, SOPs and statistics as _Unrolled; the neurons
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
    the memory budget (then _Sliced runs it in slices of that many steps), else None. The slices
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
        raise UserError(f"--timesteps {t_max}: one sample needs {per_step * t_max / 2 ** 30:.3g} GiB at this T; in "
                        f"slices that fit --max-memory ({memory.describe()}) it would take {runs} runs per batch; "
                        "evaluate a smaller T or give more --max-memory")
    even = max(d for d in range(1, most + 1) if t_max % d == 0)
    if 2 * even >= most:           # slices that divide T: one pair of sessions
        return even
    return -(-t_max // runs)       # equal slices, the last shorter


class _History(_OneSimulation):
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


class _PerT:
    """Early exit (the model decides its steps), a T off the chunk grid, or delays other than the
    model's (looped models): one run per window."""

    def __init__(self, snn, info: SNNInfo, windows, threads: int, out_names=None):
        self.windows = windows
        self.sessions = {(t, d): runtime.session(simulate.with_timesteps(snn, info, t, d), threads) for t, d in windows}
        self.out_names = out_names or [score_output(snn)]
        self.has_steps = any(o.name == STEPS_OUTPUT for o in snn.graph.output)
        self.names = self.out_names + ([STEPS_OUTPUT] if self.has_steps else [])
        self.inputs = _inputs(next(iter(self.sessions.values())))

    def __call__(self, feeds):
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        n = len(self.out_names)
        for key in self.windows:
            values = runtime.run_checked(self.sessions[key], self.names, feeds, "evaluation")
            yield key, dict(zip(self.out_names, values[:n])), {"steps_used": values[n] if self.has_steps else None}


def window_scores(snn: onnx.ModelProto, info: SNNInfo, windows, batches, ann: onnx.ModelProto | None = None,
                  spike_counts: bool = True, threads: int = 0, desc: str | None = None,
                  total: int | None = None, layers: bool = False, rider=None,
                  memory: MemoryBudget | None = None, task=None) -> tuple:
    """(Scores, sops measured, steps measured, per-layer statistics at the largest T or None) of
    `snn` for each (T, D) window over `batches`. `rider`: see _Unrolled (unrolled models only).
    `memory`: an unrolled simulation whose one sample does not fit it runs in slices of steps
    (_Sliced; not with a rider). `task`: tasks.TaskSpec scored per window (scoring.Scores)."""
    windows = sorted(set(windows))
    per_t = info.looped and (info.early_exit is not None or not info.readouts
                             or any(t % info.chunk for t, _ in windows) or any(d != info.delay for _, d in windows))
    out_names = list(dict.fromkeys([score_output(snn)] + (list(task.outputs) if task is not None else [])))
    stats = None
    if layers and not per_t:
        stats = _LayerStats(snn, info, ann, max(t for t, _ in windows), threads)
    elif layers:
        log.warning("per-layer statistics of a looped model need one simulation of all steps: not available "
                    "with early exit, a T off the chunk grid or delays other than the model's")
    if per_t:
        outputs = _PerT(snn, info, windows, threads, out_names)
    elif info.looped:
        outputs = _History(snn, info, windows, threads, stats, out_names)
    else:
        steps = None if rider is not None else slice_steps(info, max(t for t, _ in windows), memory, snn.ByteSize())
        if steps is not None:
            log.info("memory budget %s: the unrolled simulation at T=%d runs %d steps at a time",
                     memory.describe(), max(t for t, _ in windows), steps)
            outputs = _Sliced(snn, info, windows, spike_counts, threads, stats, steps, out_names)
        else:
            outputs = _Unrolled(snn, info, windows, spike_counts, threads, stats, rider, out_names)
    if rider is not None and not isinstance(outputs, _Unrolled):
        raise ValueError("a rider needs the unrolled simulation")
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
    scores = scoring.score(batches, outputs, windows, ann_sess, score_output(snn), bar, task)
    if scores.n == 0:
        raise UserError("evaluation received no data")
    return scores, bool(getattr(outputs, "counts", None)), per_t and getattr(outputs, "has_steps", False), stats


def delay_candidates(timesteps: int) -> list:
    """The readout delays searched at T (`--delay auto`): D = 0 .. 3T/4 (at least a quarter of the
    steps are averaged), at most ~49 values."""
    step = max(1, timesteps // 64)
    return list(range(0, 3 * timesteps // 4 + 1, step))


def window_delays(info: SNNInfo, timesteps, delay=None) -> dict:
    """T -> the readout delay `eval` uses there: the model's D scaled in proportion to T
    (round(D * T / T_model), the model's own D at its T), or `delay` (an int: the same D at every T,
    which each T must exceed). `delay="auto"` is resolved by evaluate (chosen per T)."""
    out = {}
    for t in timesteps:
        if t < 1:
            raise UserError(f"--timesteps {t}: must be >= 1")
        if delay is None:
            out[t] = min(t - 1, int(info.delay * t / info.timesteps + 0.5))
        elif int(delay) >= t:
            raise UserError(f"--delay {delay}: every T must exceed it (T={t} does not)")
        else:
            out[t] = int(delay)
    return out


def evaluate(snn: onnx.ModelProto, batches, timesteps, ann: onnx.ModelProto | None = None,
             progress: bool = False, total: int | None = None, threads: int = 0, layers: bool = False,
             memory: MemoryBudget | None = None, task=None, delay=None) -> EvalResult:
    """The task's metric (`task`: tasks.TaskSpec; without one, top-1 accuracy when there are labels),
    agreement, relative error and SOPs of `snn` at each T, reading out from the delay window_delays
    gives (`delay`: None, an int, or "auto": per T, the candidate D whose output is closest to the
    ANN's on this data, which needs `ann`). With `layers`, per-layer statistics at the largest T
    (see _LayerStats). `memory`: see window_scores. Each row says the D it used."""
    info = SNNInfo.from_metadata(snn)
    ts = sorted(set(int(t) for t in timesteps))
    if not ts:
        raise UserError("--timesteps: no T given")
    start = time.perf_counter()
    if delay == "auto":
        if ann is None:
            raise UserError("--delay auto: needs --ann (the delay is chosen by the output's distance to the ANN's)")
        if info.looped:
            raise UserError("--delay auto: needs one simulation for every candidate delay; evaluate the unrolled "
                            "form, or give --delay D")
        windows = [(t, d) for t in ts for d in delay_candidates(t) if d < t]
    elif delay is None and info.looped and not simulate.has_delay_constant(snn):
        if ts[0] <= info.delay:     # converted before the delay was a named constant: it is built in
            raise UserError(f"--timesteps: this looped model's delay D={info.delay} is built in (converted by an "
                            "older onnx2snn); every T must exceed it, or convert the model again")
        windows, delay = [(t, info.delay) for t in ts], "own"
    else:
        windows = list(window_delays(info, ts, delay).items())
    scores, sops, steps, stats = window_scores(snn, info, windows, batches, ann, threads=threads, total=total,
                                               desc=f"evaluating (T up to {ts[-1]})" if progress else None,
                                               layers=layers, memory=memory, task=task)
    if delay == "auto":
        best = {}
        for t, d in windows:
            err = scores.rel_error((t, d))
            if t not in best or (err is not None and err < best[t][1]):
                best[t] = (d, err)
        windows = [(t, best[t][0]) for t in ts]
    res = EvalResult(samples=scores.n, ann_accuracy=scores.ann_accuracy(),
                     ann_macs=float(info.costs.get("ann_macs", 0.0)), seconds=time.perf_counter() - start,
                     task=task.name if task is not None else None, ann_metrics=scores.ann_metric_result(),
                     primary_key=task.metric.primary if task is not None else None,
                     delay_rule=delay if delay in ("auto", "own") else ("scaled" if delay is None else "fixed"))
    for key in windows:
        tally = scores.tally[key]
        res.rows.append({"T": key[0], "delay": key[1], "accuracy": scores.accuracy(key),
                         "agreement": scores.agreement(key), "rel_error": scores.rel_error(key),
                         "metrics": scores.metric(key), "sops": tally.sops / scores.n if sops else None,
                         "pre_macs": float(info.costs.get("pre_macs", 0.0)),
                         "steps_used": tally.steps / scores.n if steps else None})
    if stats is not None:
        res.layers, res.layers_T = stats.rows(), stats.t
    return res
