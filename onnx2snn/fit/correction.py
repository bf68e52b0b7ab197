"""Post-conversion correction (Li et al., "A free lunch from ANN", ICML 2021; combined with local
threshold balancing in Bu et al., Table 3), done on calibration samples.

Layer by layer from the input side, each neuron's average output over the T steps (spikes are
theta-weighted, so the average is in the ANN's units) is compared with the ANN's clipped activation
(the ANN with every activation clipped at the SNN's thresholds, which the SNN's rates approach).
- potential: the mean difference per neuron e becomes extra initial membrane potential T * e (the
  neuron then emits about T * e / theta more spikes of value theta over T steps);
- bias: the mean difference per channel becomes a constant input current added at every step,
  which shifts the average output by about that much. With a delayed readout (steps D..T-1) the
  SNN's averages are taken over those steps, the ones the output is read from;
- both (`--correct both`, the default): potential first, then the readout delay, then bias over the
  readout window (choices.correct_and_delay runs the steps in that order).
Each layer is corrected before the next is measured, so later layers see corrected inputs
(correcting all layers from one uncorrected simulation over-corrects: measured on bench ResNet-32 at
T=16, top-1 fell from 76% to 10-26%). That ordering costs one simulation, not one per layer: in the
correction graph every neuron runs twice, first to measure its difference from the ANN on the batch,
then with the batch's correction applied, which is what the next layer sees (`_correction_graph`).
With every sample in one batch (when they fit the memory budget) this is exactly layer-by-layer
correction over the whole set; otherwise the batches' corrections are averaged. Statistics are means
reduced in the graph. The corrections live in the thresholds (`Thresholds.bias`,
`Thresholds.potential`): `--thresholds` reuses them when they were made for the same T and kind.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from tqdm import tqdm

from ..calibration import probes
from .. import runtime
from ..graph.analyse import Analysis
from ..graph.builder import Builder
from ..graph.onnx_io import default_opset
from ..config import SNNConfig
from ..errors import UserError, param
from ..snn import simulate, to_snn
from ..snn.timefold import theta_broadcast
from ..calibration.thresholds import Thresholds

log = logging.getLogger(__name__)


STEPS = {"bias": ("bias",), "potential": ("potential",), "both": ("potential", "bias")}
ANN_MEAN = "onnx2snn.ann_mean/"      # graph inputs of the correction graph: the ANN's means per layer


class Corrector:
    """One correction of `kind` measured on batches: the correction graph (`_correction_graph`), the
    clipped ANN that gives each batch's means, and the size-weighted sums of the batches' differences.
    It runs on its own (`run`) or rides along in the delay choice's simulation (snn.runs.Unrolled's
    rider: `rewrite`, `feeds`, `collect`), so one simulation serves both."""

    def __init__(self, analysis: Analysis, thresholds: Thresholds, config: SNNConfig, kind: str, first_step: int):
        if kind not in ("bias", "potential"):
            raise UserError(f"{param('correct')} {kind}: expected bias or potential")
        self.args = (analysis, thresholds, config, kind, first_step)
        self.thresholds, self.config = thresholds, config
        self.kind, self.first_step, self.t = kind, first_step, config.timesteps
        probe_cfg = config.reference(delay=0, correct="none")
        self.snn, self.layers = to_snn(analysis, thresholds, probe_cfg)
        self.act_of = {a.name: a for a in analysis.activations}
        self.axes = {l.name: simulate.channel_axes(self.act_of[l.source].axis, self.act_of[l.source].rank)
                     if kind == "bias" else [0] for l in self.layers}
        ann_model, self.fixed = probes.clipped(analysis, thresholds.values, sorted({l.tensor for l in self.layers}))
        tensors = {l.tensor: self.axes[l.name] for l in self.layers}
        ann_model, self.ann_names = simulate.with_means(ann_model, tensors)
        self.ann_of = dict(zip(tensors, range(len(self.ann_names))))     # tensor -> index of its mean
        self.ann_sess = runtime.session(ann_model)
        self.ann_inputs = {i.name for i in self.ann_sess.get_inputs()}
        self.total, self.n = None, 0

    def __reduce__(self):       # to a cluster's workers: its settings, rebuilt there (sessions included)
        return Corrector, self.args

    # ---- as a rider of a simulation (snn.runs.Unrolled) ----------------------------------------
    def rewrite(self, model: onnx.ModelProto) -> tuple:
        """(model with every neuron corrected in the graph, the difference outputs added)."""
        return _correction_graph(model, self.layers, self.act_of, self.axes, self.kind, self.t, self.first_step,
                                 self.config.v_init, keep_outputs=True)

    def feeds(self, feeds: dict) -> dict:
        """The clipped ANN's means on this batch, as the correction graph's inputs."""
        values = runtime.run_checked(self.ann_sess, self.ann_names,
                                     {**{k: v for k, v in feeds.items() if k in self.ann_inputs}, **self.fixed},
                                     "correction")
        return {ANN_MEAN + l.name: values[self.ann_of[l.tensor]] for l in self.layers}

    def collect(self, diffs, size: int) -> None:
        weighted = [d.astype(np.float64) * size for d in diffs]
        self.total = weighted if self.total is None else [a + b for a, b in zip(self.total, weighted)]
        self.n += size

    # ---- on its own ------------------------------------------------------------------------------
    def build(self, threads: int = 0) -> "_CorrectionRunner":
        """The correction graph's session (here, or on a cluster's worker: cluster/work.py)."""
        return _CorrectionRunner(self, threads)

    def run(self, batches, progress: bool = False, engine=None) -> None:
        """Measure the correction on `batches` (a list of feed dicts, or batches.EvalBatches), in
        order; on `engine`'s workers when given (cluster/), collected here in the same order."""
        total = len(batches.plan if hasattr(batches, "plan") else batches)
        bar = tqdm(total=total, desc=f"{self.kind} correction", unit="batch", disable=None if progress else True,
                   leave=False)
        if engine is None:
            runner = self.build()
            results = (runner(feeds) for feeds, _ in _pairs(batches))
        else:
            from ..cluster import batch_shards
            shards, reading = batch_shards(engine, _pairs(batches), f"{self.kind} correction",
                                           why="the correction's samples are held here")
            results = (value for _, value, _ in engine.map(f"{self.kind} correction", self, shards, reading)
                       if value is not None)
        for diffs, size in results:
            self.collect(diffs, size)
            bar.update(1)
        bar.close()

    def result(self) -> Thresholds:
        """The thresholds with this correction added (the batches' differences averaged)."""
        if not self.n:
            raise UserError(f"{param('correct')}: received no samples")
        th, t = self.thresholds, self.t
        corrected = Thresholds(dict(th.values), th.method, dict(th.info), bias=dict(th.bias),
                               potential=dict(th.potential))
        before = []
        for layer, diff in zip(self.layers, (x / self.n for x in self.total)):
            before.append(float(np.abs(diff).mean()))
            # float32 arithmetic in the correction graph's order (e, then T*e, then + v0): with every
            # sample in one batch the network written is bit for bit the one the graph corrected
            diff = diff.astype(np.float32)
            if self.kind == "bias":
                corrected.bias[layer.name] = (corrected.bias.get(layer.name, np.float32(0)) + diff).astype(np.float32)
                continue
            start = corrected.potential.get(layer.name)
            if start is None:
                act = self.act_of[layer.source]
                start = np.broadcast_to(theta_broadcast(layer.theta, act.axis, act.rank), diff.shape) \
                    * np.float32(self.config.v_init)
            scaled = np.float32(t) * diff
            corrected.potential[layer.name] = (np.asarray(start, np.float32).reshape(-1) + scaled.reshape(-1)) \
                .astype(np.float32)
        done = dict(corrected.info.get("correction") or {})
        steps = [s for s in done.get("steps", []) if s["kind"] != self.kind]
        steps.append({"kind": self.kind, "first_step": self.first_step,
                      "mean_abs_difference": round(float(np.mean(before)), 6)})
        kinds = {s["kind"] for s in steps}
        corrected.info = dict(corrected.info, correction={
            "kind": "both" if kinds == {"bias", "potential"} else self.kind, "timesteps": t, "samples": self.n,
            "steps": steps, **({"spikes": self.config.neuron} if self.config.neuron != "binary" else {})})
        log.info("%s correction at T=%d (steps %d..%d) on %d samples: mean |difference| before %.4g", self.kind, t,
                 self.first_step, t - 1, self.n, np.mean(before))
        return corrected.validate("correction")


class _CorrectionRunner:
    """A Corrector's correction graph in a session: feeds -> the batch's differences per layer."""

    def __init__(self, corrector: Corrector, threads: int = 0):
        c = corrector
        model, self.outs = _correction_graph(c.snn, c.layers, c.act_of, c.axes, c.kind, c.t, c.first_step,
                                             c.config.v_init)
        self.corrector, self.sess = c, runtime.session(model, threads)
        self.inputs = {i.name for i in self.sess.get_inputs()}

    def __call__(self, feeds: dict, labels=None) -> tuple:
        """(the batch's differences per layer, its samples)."""
        run_feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        run_feeds.update(self.corrector.feeds(feeds))
        return runtime.run_checked(self.sess, self.outs, run_feeds, "correction"), len(next(iter(feeds.values())))


def _pairs(batches):
    """(feeds, labels) pairs: a list of feed dicts as (feeds, None); batches.EvalBatches as they are."""
    if hasattr(batches, "plan"):
        return batches.without_labels()
    return [(f, None) for f in batches]


def correct(analysis: Analysis, thresholds: Thresholds, config: SNNConfig, batches, kind: str = "bias",
            first_step: int = 0, progress: bool = False, engine=None) -> Thresholds:
    """Thresholds with a correction of `kind` ("bias" or "potential") added for every neuron at
    `config.timesteps` (on top of corrections `thresholds` already holds). `batches`: a list of feed
    dicts (calibration samples). `first_step`: the SNN's averages are taken over steps
    first_step..T-1 (the readout window of a delayed readout) instead of all T steps.

    One simulation per batch measures every layer: in the graph (`_correction_graph`) each neuron
    runs, its mean output is compared with the ANN's on the same samples, and the neuron runs again
    with that batch's correction, so the next layer is measured on corrected input, as layer by layer
    correction over all batches would (exactly, for one batch). The corrections kept are the
    size-weighted means of the batches'."""
    if not batches:
        raise UserError(f"{param('correct')}: received no samples")
    corrector = Corrector(analysis, thresholds, config, kind, first_step)
    corrector.run(batches, progress, engine)
    return corrector.result()


def _correction_graph(snn: onnx.ModelProto, layers, act_of: dict, axes: dict, kind: str, t: int, first_step: int,
                      v_init: float, keep_outputs: bool = False) -> tuple:
    """(model, output names): the unrolled SNN in which every neuron of `layers` runs twice. Its
    first run's mean output over steps first_step..T-1 and `axes` (the ANN tensor's axes) is
    subtracted from graph input ANN_MEAN + name (the clipped ANN's mean on the same samples); the
    difference e is this batch's correction — a current e added at every step (bias) or extra initial
    potential T*e per neuron (potential) — and the second run, with it, feeds the rest of the network.
    The outputs are the differences e, one per layer, shaped as the ANN's means (after the model's
    own outputs with `keep_outputs`)."""
    graph = gs.import_onnx(snn)
    b = Builder(graph, default_opset(snn), "onnx2snn.correction")
    nodes = {n.name: n for n in graph.nodes if n.op == "IFNeuron"}
    outs = []
    for layer in layers:
        node, act = nodes[layer.name], act_of[layer.source]
        b.prefix = f"{layer.name}/correction"
        spikes, raw = node.outputs[0], gs.Variable(f"{layer.name}/uncorrected", np.float32)
        node.outputs = [raw]
        # the first run's mean over the window: [T*N, ...] -> [T, N, ...], steps first..T-1, then `axes`
        folded = b.reshape(raw, b.concat([b.const(np.array([t, -1], np.int64)), b.shape_tail(raw)], dtype=np.int64))
        if first_step:
            folded = b.op("Slice", [folded, b.const(np.array([first_step], np.int64)),
                                    b.const(np.array([t], np.int64)), b.const(np.array([0], np.int64))])
        snn_mean = b.reduce("ReduceMean", folded, [0] + [a + 1 for a in axes[layer.name]], keepdims=0)
        ann_mean = gs.Variable(ANN_MEAN + layer.name, np.float32)
        graph.inputs.append(ann_mean)
        diff = b.op("Sub", [ann_mean, snn_mean], name=f"{layer.name}/correction/difference")
        outs.append(diff)
        x, theta = node.inputs[0], node.inputs[1]
        if kind == "bias":            # e per channel: IFNeuron's bias input, added after x (in that order)
            inputs = list(node.inputs[:4]) + [gs.Variable.empty()] * (4 - len(node.inputs))
            inputs += [gs.Variable.empty(), b.reshape(diff, [-1])]
        else:                         # v0 = (the neuron's v0, or v_init * theta) + T * e, per neuron
            scaled = b.op("Mul", [diff, b.const(np.float32(t))])
            if len(node.inputs) > 3 and isinstance(node.inputs[3], gs.Constant):
                v0 = b.op("Add", [node.inputs[3], b.reshape(scaled, [-1])])
            else:
                theta_b = theta_broadcast(np.asarray(theta.values, np.float32), act.axis, act.rank)
                start = b.const((theta_b * np.float32(v_init)).astype(np.float32))
                v0 = b.reshape(b.op("Add", [scaled, start]), [-1])
            inputs = [x, theta, gs.Variable.empty(), v0]
        graph.nodes.append(gs.Node("IFNeuron", f"{layer.name}/corrected", dict(node.attrs), inputs, [spikes],
                                   domain=node.domain))
    graph.outputs = (list(graph.outputs) if keep_outputs else []) + outs
    return gs.export_onnx(graph.cleanup().toposort(), do_type_check=False), [o.name for o in outs]


def stored(thresholds: Thresholds, kind: str, timesteps: int, spikes: str = "binary") -> bool:
    """Whether `thresholds` already hold the correction `kind` made for `timesteps` steps of the
    neuron `spikes` (config.SNNConfig.neuron: binary, burst:K, either +signed)."""
    info = thresholds.info.get("correction") or {}
    return bool(thresholds.bias or thresholds.potential) and info.get("kind") == kind \
        and info.get("timesteps") == timesteps and info.get("spikes", "binary") == spikes


def without(thresholds: Thresholds) -> Thresholds:
    """The thresholds alone, corrections dropped."""
    info = {k: v for k, v in thresholds.info.items() if k != "correction"}
    return Thresholds(dict(thresholds.values), thresholds.method, info, stats=thresholds.stats)
