"""Evaluate a converted SNN at several T from one simulation up to the largest T.

The graphs come from snn/simulate.py and run in snn/runs.py; this module picks the run (unrolled,
in slices of steps, looped, or one per window), the windows (T, D) and the batch sizes, and scores
what the run yields (scoring.py), with per-layer statistics when asked.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..calibration import probes
from .. import runtime
from . import scoring
from ..graph.analyse import as_analysis
from ..errors import UserError, param
from ..runtime.memory import MemoryBudget
from ..snn import simulate
from ..snn.info import SNNInfo
from . import layers as layer_kinds
from ..snn.runs import SLICE_WEIGHT_COPIES, score_output, slice_steps  # noqa: F401 (SLICE_WEIGHT_COPIES: API)
from ..snn.runs import History, input_names, PerT, Sliced, Unrolled

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
    spiking_fraction: float | None = None        # share of the ANN's MACs done as spike-driven accumulates
    compensated_macs: float = 0.0                # analog operations per sample and step of compensated nodes

    def primary(self, row=None):
        """The task's headline figure (top1, miou, map, psnr) of a row, or of the ANN."""
        figures = self.ann_metrics if row is None else row.get("metrics")
        if not figures:
            return row.get("accuracy") if row is not None else self.ann_accuracy
        return figures.get(self.primary_key)

    def to_json(self) -> dict:
        keys = ("T", "delay", "accuracy", "agreement", "rel_error", "metrics")
        if self.compensated_macs:        # compensated nodes: their analog work and the SOPs, per T
            keys += ("sops", "analog_macs")
        out = {"samples": self.samples, "task": self.task,
               "ann": {"accuracy": self.ann_accuracy, "metrics": self.ann_metrics},
               "snn": [{k: r.get(k) for k in keys} for r in self.rows]}
        if self.compensated_macs:
            out.update(spiking_fraction=self.spiking_fraction, compensated_macs_per_step=self.compensated_macs)
        return out


def readout_timesteps(t: int) -> list:
    """T/4, T/2 and T (those >= 1): the steps `eval` and the check after converting report by default."""
    return sorted({x for x in (t // 4, t // 2, t) if x >= 1})


def default_timesteps(info: SNNInfo) -> list:
    """T/4, T/2 and T of a converted model (its delay scaled to each: window_delays)."""
    return readout_timesteps(info.timesteps)


class _LayerStats:
    """Per layer at T: firing rate (spikes per neuron per step), the fractions of silent (no spike)
    and saturated (a spike at every step; K with burst:K) neurons, and the rate error against the ANN's clipped
    activation (the probed ANN with the SNN's thresholds): sum |rate x theta - clip(a, 0, theta)| /
    sum |clip(a, 0, theta)| over neurons and samples."""

    def __init__(self, snn, info: SNNInfo, ann, t: int, threads: int):
        self.t, self.info = t, info
        self.tally = self._fresh()       # merged over batches (merge)
        self.batch = self._fresh()       # this batch's (add; taken by take)
        self.thetas = simulate.neuron_thresholds(snn, info)
        self.tensor = {n["name"]: n["tensor"] for n in info.neurons}
        self.sess, self.with_ann = None, ann is not None
        self.layers = {}
        if ann is not None:
            analysis = as_analysis(ann)
            self.layers = layer_kinds.describe(analysis, info.neurons)
            names = sorted({self.tensor[n] for n in self.thetas})
            # the neuron's range: K·θ with burst:K spikes (θ is then the size of one of its K levels)
            theta_of = {n["source"]: self.thetas[n["name"]] * np.float32(info.max_spikes) for n in info.neurons
                        if n["name"] in self.thetas}
            model, self.fixed = probes.clipped(analysis, theta_of, names)
            self.sess = runtime.session(model, threads)
            self.names = names
            self.inputs = input_names(self.sess)

    def _fresh(self) -> dict:
        return {n["name"]: {"spikes": 0.0, "count": 0, "samples": 0, "silent": 0, "saturated": 0, "err": 0.0,
                            "ref": 0.0} for n in self.info.neurons}

    def __getstate__(self):         # the tallies travel (a cluster's shards), the session does not
        return {"t": self.t, "info": self.info, "tally": self.tally, "batch": self.batch, "thetas": self.thetas,
                "tensor": self.tensor, "sess": None, "with_ann": self.with_ann, "layers": self.layers}

    def take(self) -> dict:
        """This batch's tallies (and a fresh one for the next)."""
        batch, self.batch = self.batch, self._fresh()
        return batch

    def merge(self, batch: dict) -> None:
        for name, tl in self.tally.items():
            for key, value in batch[name].items():
                tl[key] += value

    def add(self, feeds: dict, per_neuron: dict) -> None:
        """per_neuron: name -> (summed weighted spikes, spike count), each [N * neurons], over T."""
        clipped = {}
        if self.sess is not None:
            run_feeds = {k: v for k, v in feeds.items() if k in self.inputs}
            run_feeds.update(self.fixed)
            clipped = dict(zip(self.names, runtime.run_checked(self.sess, self.names, run_feeds, "report")))
        batch = max((np.shape(v)[0] for v in feeds.values() if np.ndim(v)), default=1)
        for name, (total, fired) in per_neuron.items():
            tl = self.batch[name]
            tl["samples"] += batch
            tl["spikes"] += float(fired.sum())
            tl["count"] += fired.size
            tl["silent"] += int(np.sum(fired == 0))
            tl["saturated"] += int(np.sum(fired >= self.t * self.info.max_spikes))
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
                        "rate_error": tl["err"] / tl["ref"] if self.with_ann and tl["ref"] > 0 else None,
                        **self.layers.get(n["name"], {})})
        layer_kinds.error_added(out)
        return out


@dataclass
class ScorePart:
    """One batch's share of window_scores: its Scores, per-layer tallies and the rider's outputs."""
    scores: scoring.Scores
    layers: dict | None = None
    rider: list | None = None
    counts: bool = False        # SOPs measured (spike counts)
    steps: bool = False         # steps used measured (early exit)


@dataclass
class ScoreJob:
    """What window_scores runs on each batch, built once per process (`build`): here, or shipped to
    a cluster's workers (cluster/), where the rider (a correction.Corrector) is rebuilt from its
    settings. `threads` 0: onnxruntime's default."""
    snn: onnx.ModelProto
    windows: list
    ann: onnx.ModelProto | None = None
    spike_counts: bool = True
    layers: bool = False
    rider: object = None
    memory: MemoryBudget | None = None
    task: object = None

    def per_t(self, info: SNNInfo) -> bool:
        return info.looped and (info.early_exit is not None or not info.readouts
                                or any(t % info.chunk for t, _ in self.windows)
                                or any(d != info.delay for _, d in self.windows))

    def stats(self, info: SNNInfo, threads: int):
        """Per-layer statistics at the largest T (None when not asked or not available)."""
        if self.layers and not self.per_t(info):
            return _LayerStats(self.snn, info, self.ann, max(t for t, _ in self.windows), threads)
        return None

    def build(self, threads: int = 0) -> "ScoreRunner":
        return ScoreRunner(self, threads)


class ScoreRunner:
    """A ScoreJob's sessions: the simulation that yields every window's outputs (snn/runs.py), the
    ANN and the per-layer statistics; called per batch, it returns the batch's ScorePart."""

    def __init__(self, job: ScoreJob, threads: int = 0):
        snn, windows, rider = job.snn, job.windows, job.rider
        info = SNNInfo.from_metadata(snn)
        self.info, self.rider = info, rider
        out_names = list(dict.fromkeys([score_output(snn)] + (list(job.task.outputs) if job.task is not None else [])))
        self.stats = job.stats(info, threads)
        if job.per_t(info):
            outputs = PerT(snn, info, windows, threads, out_names)
        elif info.looped:
            outputs = History(snn, info, windows, threads, self.stats, out_names)
        else:
            steps = None if rider is not None else slice_steps(info, max(t for t, _ in windows), job.memory,
                                                               snn.ByteSize())
            if steps is not None:
                log.info("memory budget %s: the unrolled simulation at T=%d runs %d steps at a time",
                         job.memory.describe(), max(t for t, _ in windows), steps)
                outputs = Sliced(snn, info, windows, job.spike_counts, threads, self.stats, steps, out_names)
            else:
                outputs = Unrolled(snn, info, windows, job.spike_counts, threads, self.stats, rider, out_names)
        if rider is not None and not isinstance(outputs, Unrolled):
            raise ValueError("a rider needs the unrolled simulation")
        self.outputs = outputs
        ann_sess = None
        if job.ann is not None:
            ann_sess = runtime.session(job.ann, threads)
            missing = sorted(input_names(ann_sess) - {i.name for i in snn.graph.input})
            if missing:
                raise UserError(f"{param('ann')}: its input(s) {', '.join(missing)} are not inputs of the SNN; "
                                "is it the model that was converted?")
        self.scorer = scoring.BatchScorer(outputs, windows, ann_sess, score_output(snn), job.task)
        self.counts = bool(getattr(outputs, "counts", None))
        self.steps = job.per_t(info) and getattr(outputs, "has_steps", False)

    def __call__(self, feeds: dict, labels) -> ScorePart:
        scores = self.scorer(feeds, labels)
        return ScorePart(scores, self.stats.take() if self.stats is not None else None,
                         getattr(self.outputs, "rider_values", None), self.counts, self.steps)


def window_scores(snn: onnx.ModelProto, info: SNNInfo, windows, batches, ann: onnx.ModelProto | None = None,
                  spike_counts: bool = True, threads: int = 0, desc: str | None = None,
                  total: int | None = None, layers: bool = False, rider=None,
                  memory: MemoryBudget | None = None, task=None, engine=None, what: str = "evaluation") -> tuple:
    """(Scores, sops measured, steps measured, per-layer statistics at the largest T or None) of
    `snn` for each (T, D) window over `batches`. `rider`: see Unrolled (unrolled models only); its
    outputs are collected batch by batch (`rider.collect`). `memory`: an unrolled simulation whose
    one sample does not fit it runs in slices of steps (Sliced; not with a rider). `task`:
    tasks.TaskSpec scored per window (scoring.Scores). `engine`: a cluster (cluster/) that runs the
    batches as shards (`what` names the step in its notes); the batches' results are merged in the
    same order either way."""
    windows = sorted(set(windows))
    job = ScoreJob(snn, windows, ann, spike_counts, layers, rider, memory, task)
    if layers and job.per_t(info):
        log.warning("per-layer statistics of a looped model need one simulation of all steps: not available "
                    "with early exit, a T off the chunk grid or delays other than the model's")
    bar = None
    if desc:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=desc, unit="img", leave=False, disable=None)
    if engine is None:
        runner = job.build(threads)
        stats = runner.stats
        parts = (runner(feeds, labels) for feeds, labels in batches)
    else:
        from ..cluster import batch_shards
        stats = job.stats(info, threads)
        shards, reading = batch_shards(engine, batches, what)
        parts = _from_shards(engine.map(what, job, shards, reading), batches)
    scores = scoring.Scores(windows, score_output(snn), task, ann is not None)
    counts = steps = False
    for part in parts:
        counts, steps = part.counts, part.steps
        scores.merge(part.scores)
        if stats is not None:
            stats.merge(part.layers)
        if rider is not None:
            rider.collect(part.rider, part.scores.n)
        if bar is not None:
            bar.update(part.scores.n)
    if bar is not None:
        bar.close()
    if scores.n == 0:
        raise UserError("evaluation received no data")
    return scores, counts, steps, stats


def _from_shards(results, batches):
    """The parts of a cluster's shard results, the samples it skipped (NaN/Inf) counted into `batches`'."""
    check = getattr(batches, "nonfinite", None)
    for _, part, skipped in results:
        if skipped and check is not None:
            check.skipped += skipped
        if part is not None:
            yield part


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
            raise UserError(f"{param('timesteps')} {t}: must be >= 1")
        if delay is None:
            out[t] = min(t - 1, int(info.delay * t / info.timesteps + 0.5))
        elif int(delay) >= t:
            raise UserError(f"{param('delay')} {delay}: every T must exceed it (T={t} does not)")
        else:
            out[t] = int(delay)
    return out


def evaluate(snn: onnx.ModelProto, batches, timesteps, ann: onnx.ModelProto | None = None,
             progress: bool = False, total: int | None = None, threads: int = 0, layers: bool = False,
             memory: MemoryBudget | None = None, task=None, delay=None, engine=None,
             what: str = "evaluation") -> EvalResult:
    """The task's metric (`task`: tasks.TaskSpec; without one, top-1 accuracy when there are labels),
    agreement, relative error and SOPs of `snn` at each T, reading out from the delay window_delays
    gives (`delay`: None, an int, or "auto": per T, the candidate D whose output is closest to the
    ANN's on this data, which needs `ann`). With `layers`, per-layer statistics at the largest T
    (see _LayerStats). `memory`, `engine` (a cluster): see window_scores. Each row says the D it used."""
    info = SNNInfo.from_metadata(snn)
    ts = sorted(set(int(t) for t in timesteps))
    if not ts:
        raise UserError(f"{param('timesteps')}: no T given")
    start = time.perf_counter()
    if delay == "auto":
        if ann is None:
            raise UserError(f"{param('delay')} auto: needs {param('ann')} (the delay is chosen by the output's "
                            f"distance to the ANN's)")
        if info.looped:
            raise UserError(f"{param('delay')} auto: needs one simulation for every candidate delay; evaluate the "
                            f"unrolled "
                            f"form, or give {param('delay')} D")
        windows = [(t, d) for t in ts for d in delay_candidates(t) if d < t]
    elif delay is None and info.looped and not simulate.has_delay_constant(snn):
        if ts[0] <= info.delay:     # converted before the delay was a named constant: it is built in
            raise UserError(f"{param('timesteps')}: this looped model's delay D={info.delay} is built in (converted by "
                            f"an "
                            "older onnx2snn); every T must exceed it, or convert the model again")
        windows, delay = [(t, info.delay) for t in ts], "own"
    else:
        windows = list(window_delays(info, ts, delay).items())
    scores, sops, steps, stats = window_scores(snn, info, windows, batches, ann, threads=threads, total=total,
                                               desc=f"evaluating (T up to {ts[-1]})" if progress else None,
                                               layers=layers, memory=memory, task=task, engine=engine, what=what)
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
                     delay_rule=delay if delay in ("auto", "own") else ("scaled" if delay is None else "fixed"),
                     spiking_fraction=info.costs.get("spiking_fraction"),
                     compensated_macs=float(info.costs.get("compensated_macs", 0.0)))
    for key in windows:
        tally = scores.tally[key]
        res.rows.append({"T": key[0], "delay": key[1], "accuracy": scores.accuracy(key),
                         "agreement": scores.agreement(key), "rel_error": scores.rel_error(key),
                         "metrics": scores.metric(key), "sops": tally.sops / scores.n if sops else None,
                         "pre_macs": float(info.costs.get("pre_macs", 0.0)),
                         # analog work: once before the first neuron, and the compensated nodes every step
                         "analog_macs": float(info.costs.get("pre_macs", 0.0))
                         + key[0] * float(info.costs.get("compensated_macs", 0.0)),
                         "steps_used": tally.steps / scores.n if steps else None})
    if stats is not None:
        res.layers, res.layers_T = stats.rows(), stats.t
    return res
