"""Evaluate a converted SNN at several T from one simulation up to the largest T.

The SNN is run once at T_max with the readout's per-step tensors fetched; cumulative means give the
readout at every listed T, and the part of the graph after the readout (the head) runs on each.
Spikes are counted per step for the SOP estimate.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import energy, ops
from .build import Builder
from .errors import UserError
from .model import default_opset, get_metadata
from .rewrite import T_NAME

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    samples: int = 0
    ann_accuracy: float | None = None
    rows: list = field(default_factory=list)   # dicts: T, accuracy, agreement, rel_error, sops
    ann_macs: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"samples": self.samples, "ann": {"accuracy": self.ann_accuracy},
                "snn": [{k: r[k] for k in ("T", "accuracy", "agreement", "rel_error")} for r in self.rows]}


def snn_metadata(model: onnx.ModelProto) -> dict:
    meta = get_metadata(model)
    if "onnx2snn.version" not in meta:
        raise UserError("not a model converted by onnx2snn (no onnx2snn metadata)")
    return meta


def simulation_model(snn: onnx.ModelProto, t_max: int, readouts, spike_counts: bool = True):
    """The unrolled SNN at T = t_max, also returning each readout's per-step tensor and (optionally)
    each neuron's spike count per step."""
    graph = gs.import_onnx(snn)
    b = Builder(graph, default_opset(snn), "onnx2snn.eval")
    tensors = graph.tensors()
    if T_NAME in tensors:
        tensors[T_NAME].values = np.array([t_max], np.int64)
    extra, counts = [], []
    for node in [n for n in graph.nodes if n.op == "IFNeuron"]:
        node.attrs["timesteps"] = t_max
    for neuron in _neurons(snn) if spike_counts else []:
        spikes = tensors.get(neuron.get("tensor", ""))
        if spikes is None:
            continue
        fired = b.op("Cast", [b.op("Greater", [spikes, b.const(np.float32(0))], dtype=np.bool_)],
                     {"to": onnx.TensorProto.FLOAT})
        per_step = b.reduce("ReduceSum", b.reshape(fired, [t_max, -1]), [1], keepdims=0)
        per_step.name = f"{neuron['name']}/spike_count"
        counts.append((neuron["name"], per_step.name))
        extra.append(per_step)
    for r in readouts:
        t = tensors[r["steps"]]
        t.dtype = np.float32
        extra.append(t)
    graph.outputs = list(graph.outputs) + extra
    return gs.export_onnx(graph, do_type_check=False), counts


def _neurons(snn: onnx.ModelProto) -> list:
    return json.loads(get_metadata(snn).get("onnx2snn.neurons", "[]"))


def _loop_history_model(snn: onnx.ModelProto, t_max: int, readouts):
    """A looped SNN at T = t_max that also returns, after every iteration (scan outputs), each
    readout's accumulated sum and each neuron's spike count."""
    model = _with_timesteps(snn, t_max)
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    body = next(a.g for a in loop.attribute if a.name == "body")
    produced = {o for n in body.node for o in n.output}
    counts = []
    body.initializer.append(onnx.numpy_helper.from_array(np.array(0, np.float32), "onnx2snn.eval/zero"))
    for neuron in _neurons(snn):
        name = neuron.get("tensor", "")
        if name not in produced:
            continue
        base = f"{neuron['name']}/eval"
        body.node.extend([
            onnx.helper.make_node("Greater", [name, "onnx2snn.eval/zero"], [f"{base}/fired"]),
            onnx.helper.make_node("Cast", [f"{base}/fired"], [f"{base}/fired_f"], to=onnx.TensorProto.FLOAT),
            onnx.helper.make_node("ReduceSum", [f"{base}/fired_f"], [f"{base}/count"], keepdims=0)])
        body.output.append(onnx.helper.make_tensor_value_info(f"{base}/count", onnx.TensorProto.FLOAT, None))
        loop.output.append(f"{base}/counts")
        model.graph.output.append(onnx.helper.make_tensor_value_info(f"{base}/counts", onnx.TensorProto.FLOAT, None))
        counts.append((neuron["name"], f"{base}/counts"))
    for r in readouts:
        per_iter, history = f"{r['acc']}/per_iteration", f"{r['acc']}/history"
        body.node.append(onnx.helper.make_node("Identity", [r["acc"]], [per_iter], name=f"{per_iter}/copy"))
        body.output.append(onnx.helper.make_tensor_value_info(per_iter, onnx.TensorProto.FLOAT, None))
        loop.output.append(history)
        model.graph.output.append(onnx.helper.make_tensor_value_info(history, onnx.TensorProto.FLOAT, None))
        r["history"] = history
    return model, counts


def running_sums(step_tensors, t_max: int, batch: int) -> list:
    """Per readout, float64 running sums over the steps of a [T*N, ...] tensor with a leading zero
    row: S[t] - S[d] is the sum over steps d+1..t."""
    return [np.concatenate([np.zeros((1, batch) + s.shape[1:]),
                            np.cumsum(s.reshape((t_max, batch) + s.shape[1:]).astype(np.float64), axis=0)])
            for s in step_tensors]


def head_model(snn: onnx.ModelProto, readouts):
    """The part of the SNN after the readout, taking the averaged tensors as inputs."""
    graph = gs.import_onnx(snn)
    tensors = graph.tensors()
    means = []
    for r in readouts:
        t = tensors[r["mean"]]
        t.inputs.clear()
        t.dtype = np.float32
        means.append(t)
    graph.inputs = list(graph.inputs) + means
    graph.cleanup()
    return gs.export_onnx(graph, do_type_check=False)


def top1(x):
    x = np.asarray(x)
    if x.ndim == 1 and x.dtype.kind in "iu":      # the output already is a class label
        return x
    return x.reshape(len(x), -1).argmax(axis=1)


def score_output(model: onnx.ModelProto) -> str:
    """The output compared across T: the first float output of rank >= 2 (class scores), else the
    first output (scikit-learn models put the label first and the probabilities second)."""
    for out in model.graph.output:
        tt = out.type.tensor_type
        if tt.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16) \
                and tt.HasField("shape") and len(tt.shape.dim) >= 2:
            return out.name
    return model.graph.output[0].name


def _with_timesteps(snn: onnx.ModelProto, t: int) -> onnx.ModelProto:
    """A looped SNN set to run `t` steps (trip count and step limit are named initializers)."""
    from .loop import STEPS_NAME, TRIP_NAME
    model = onnx.ModelProto()
    model.CopyFrom(snn)
    chunk = int(get_metadata(snn).get("onnx2snn.chunk", 1))
    values = {TRIP_NAME: -(-t // chunk), STEPS_NAME: t}

    def patch(graph):
        for init in graph.initializer:
            if init.name in values:
                init.CopyFrom(onnx.numpy_helper.from_array(np.array(values[init.name], np.int64), init.name))
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    patch(attr.g)
    patch(model.graph)
    return model


class _Scores:
    """Accuracy, top-1 agreement, relative error, SOPs and steps used, accumulated per T."""

    def __init__(self, ts, ann_sess, out_name):
        self.ts, self.ann_sess, self.out_name = ts, ann_sess, out_name
        self.n = self.correct_ann = 0
        self.err_den = 0.0
        self.has_labels = True
        self.stats = {t: {"correct": 0, "agree": 0, "err": 0.0, "steps": 0.0, "sops": 0.0} for t in ts}
        self.ann_out = self.labels = None

    def batch(self, feeds, labels):
        """Start a batch: run the ANN once for it."""
        self.labels = labels
        self.has_labels &= labels is not None
        self.ann_out = self.ann_sess.run([self.out_name], feeds)[0] if self.ann_sess is not None else None
        if self.ann_out is not None:
            self.err_den += float(np.sum(self.ann_out.astype(np.float64) ** 2))
            if labels is not None:
                self.correct_ann += int(np.sum(top1(self.ann_out) == labels))

    def add(self, t, out, steps_used=None):
        st = self.stats[t]
        if steps_used is not None:
            st["steps"] += float(steps_used) * len(out)
        if self.labels is not None:
            st["correct"] += int(np.sum(top1(out) == self.labels))
        if self.ann_out is not None:
            st["agree"] += int(np.sum(top1(out) == top1(self.ann_out)))
            st["err"] += float(np.sum((out.astype(np.float64) - self.ann_out) ** 2))

    def result(self, seconds, costs, sops: bool, steps: bool) -> EvalResult:
        n = self.n
        if n == 0:
            raise UserError("evaluation received no data")
        res = EvalResult(samples=n, ann_macs=float(costs.get("ann_macs", 0.0)), seconds=seconds)
        if self.ann_sess is not None and self.has_labels:
            res.ann_accuracy = self.correct_ann / n
        with_ann = self.ann_sess is not None
        for t in self.ts:
            st = self.stats[t]
            res.rows.append({
                "T": t,
                "accuracy": st["correct"] / n if self.has_labels else None,
                "agreement": st["agree"] / n if with_ann else None,
                "rel_error": float(np.sqrt(st["err"] / self.err_den)) if with_ann and self.err_den > 0 else None,
                "sops": st["sops"] / n if sops else None,
                "pre_macs": float(costs.get("pre_macs", 0.0)),
                "steps_used": st["steps"] / n if steps else None,
            })
        return res


def _progress(progress, total, t_max):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=f"evaluating (T up to {t_max})", unit="img", leave=False, disable=None)


def _evaluate_each_t(snn, batches, ts, ann, progress, total, threads) -> EvalResult:
    """Looped SNNs with early exit, or T not a multiple of the chunk: one run per T and batch."""
    sessions = {t: ops.session(_with_timesteps(snn, t), threads) for t in ts}
    out_name = score_output(snn)
    has_steps = any(o.name == "onnx2snn_steps" for o in snn.graph.output)
    names = [out_name] + (["onnx2snn_steps"] if has_steps else [])
    scores = _Scores(ts, ops.session(ann, threads, custom_ops=False) if ann is not None else None, out_name)
    bar = _progress(progress, total, ts[-1])
    start = time.perf_counter()
    for feeds, labels in batches:
        scores.batch(feeds, labels)
        for t in ts:
            values = ops.run_checked(sessions[t], names, feeds, "evaluation")
            scores.add(t, values[0], values[1] if has_steps else None)
        scores.n += len(next(iter(feeds.values())))
        if bar is not None:
            bar.update(len(next(iter(feeds.values()))))
    if bar is not None:
        bar.close()
    costs = json.loads(get_metadata(snn).get("onnx2snn.costs", "{}"))
    return scores.result(time.perf_counter() - start, costs, sops=False, steps=has_steps)


def evaluate(snn: onnx.ModelProto, batches, timesteps, ann: onnx.ModelProto | None = None,
             progress: bool = False, total: int | None = None, threads: int = 0) -> EvalResult:
    meta = snn_metadata(snn)
    delay = int(meta.get("onnx2snn.delay", 0))
    ts = sorted(set(int(t) for t in timesteps))
    if not ts or ts[0] <= delay:
        raise UserError(f"--timesteps: every T must exceed the model's delay D={delay}")
    t_max = ts[-1]
    looped = meta.get("onnx2snn.form") == "loop"
    chunk = int(meta.get("onnx2snn.chunk", 1))
    if looped and (int(meta.get("onnx2snn.early_exit", 0)) or any(t % chunk for t in ts)
                   or "onnx2snn.readout" not in meta):
        # early exit decides its own steps; sums exist only at multiples of the chunk size
        return _evaluate_each_t(snn, batches, ts, ann, progress, total, threads)
    readouts = json.loads(meta["onnx2snn.readout"])
    costs = json.loads(meta.get("onnx2snn.costs", "{}"))
    fanout = costs.get("fanout", {})
    if looped:
        sim_model, counts = _loop_history_model(snn, t_max, readouts)
    else:
        sim_model, counts = simulation_model(snn, t_max, readouts)
    sim = ops.session(sim_model, threads, in_order=True)
    head = ops.session(head_model(snn, readouts), threads)
    out_name = score_output(snn)
    step_names = [r["history"] if looped else r["steps"] for r in readouts]
    head_inputs = {i.name for i in head.get_inputs()}
    sim_inputs = {i.name for i in sim.get_inputs()}
    scores = _Scores(ts, ops.session(ann, threads, custom_ops=False) if ann is not None else None, out_name)
    bar = _progress(progress, total, t_max)
    start = time.perf_counter()
    for feeds, labels in batches:
        feeds = {k: v for k, v in feeds.items() if k in sim_inputs}
        batch = len(next(iter(feeds.values())))
        values = ops.run_checked(sim, step_names + [c for _, c in counts], feeds, "evaluation")
        steps, spike_counts = values[:len(step_names)], values[len(step_names):]
        for (name, _), per_step in zip(counts, spike_counts):
            cum = np.cumsum(per_step.astype(np.float64))   # per step, or per iteration when looped
            for t in ts:
                scores.stats[t]["sops"] += cum[t // chunk - 1 if looped else t - 1] * fanout.get(name, 0.0)
        if looped:   # running sums after each iteration, steps < D already left out
            sums = [s.astype(np.float64) for s in steps]
        else:
            sums = running_sums(steps, t_max, batch)
        scores.batch(feeds, labels)
        for t in ts:
            head_feeds = {k: v for k, v in feeds.items() if k in head_inputs}
            for r, cs in zip(readouts, sums):
                total_t = cs[t // chunk - 1] if looped else cs[t] - cs[delay]
                head_feeds[r["mean"]] = (total_t / (t - delay)).astype(np.float32)
            scores.add(t, head.run([out_name], head_feeds)[0])
        scores.n += batch
        if bar is not None:
            bar.update(batch)
    if bar is not None:
        bar.close()
    return scores.result(time.perf_counter() - start, costs, sops=bool(counts), steps=False)
