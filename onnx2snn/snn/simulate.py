"""The graphs evaluation runs, built from a converted model with the same builder as the forms:

- `unrolled_steps`: the unrolled SNN at any T, also returning each readout's per-step tensor and
  each neuron's spike count per step;
- `loop_history`: a looped SNN that also returns, after every iteration, each readout's
  accumulated sum and each neuron's spike count;
- `head`: the part after the readout, fed the averaged tensors;
- `with_timesteps`: a looped SNN set to run another number of steps;
- `carried_states`: an unrolled simulation graph that hands its neurons' and spiking pools' states
  from one run to the next, so that T steps can run as several runs of fewer steps.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph.builder import Builder
from ..errors import UserError, param
from ..graph.onnx_io import default_opset
from ..ops.neuron import DOMAIN, STATES, node_states
from . import compensate
from .info import SNNInfo
from .loop import DELAY_NAME, STEPS_NAME, TRIP_NAME
from .prepare import T_NAME, steps_name
from .timefold import theta_broadcast


def _fired(b: Builder, spikes, theta_b=None):
    """Spikes per neuron and step: 1 where it fired; with bursts or signed spikes (`theta_b`, the
    thresholds broadcast to the tensor, 1 where θ = 0) |n| of a step's n·θ: a burst of n spikes
    counts n, a negative spike one, as each is a synaptic event per fan-out."""
    if theta_b is None:
        return b.op("Cast", [b.op("Greater", [spikes, b.const(np.float32(0))], dtype=np.bool_)],
                    {"to": onnx.TensorProto.FLOAT})
    return b.op("Abs", [b.op("Round", [b.op("Div", [spikes, theta_b])])])


def _burst_thetas(snn: onnx.ModelProto, info: SNNInfo) -> dict:
    """neuron name -> its thresholds broadcast to its tensor's rank (1 where θ = 0), for counting the
    spikes of bursts and the negative spikes of signed neurons; {} for binary spikes (a spike is then
    any positive output)."""
    if info.neuron == "binary":
        return {}
    found = neuron_thresholds(snn, info)
    out = {}
    for n in info.neurons:
        if n["name"] in found and n.get("rank"):
            th = np.where(found[n["name"]] > 0, found[n["name"]], np.float32(1)).astype(np.float32)
            out[n["name"]] = gs.Constant(f"{n['name']}/eval/theta_levels", theta_broadcast(th, n["axis"], n["rank"]))
    missing = [n["name"] for n in info.neurons if n["name"] not in out]
    if missing:
        raise UserError(f"{info.neuron} spikes: the thresholds of neuron '{missing[0]}' are not in the model's "
                        "metadata and constants; convert it again")
    return out


def _spike_count(b: Builder, spikes, leading, theta_b=None) -> gs.Variable:
    """Number of spikes per row of `leading` ([-1] folds all: per step)."""
    fired = _fired(b, spikes, theta_b)
    if leading is None:
        return b.reduce("ReduceSum", fired, None, keepdims=0)
    return b.reduce("ReduceSum", b.reshape(fired, leading), [1], keepdims=0)


def _over_steps(b: Builder, spikes, steps: int, theta_b=None):
    """(sum of the weighted spikes, number of spikes) of each neuron over the `steps` steps of a
    [steps*N, ...] tensor, flattened to [N * neurons per sample]."""
    fired = _fired(b, spikes, theta_b)
    return tuple(b.reduce("ReduceSum", b.reshape(t, [steps, -1]), [0], keepdims=0) for t in (spikes, fired))


def _spikes(tensors: dict, neuron: dict):
    """A neuron's spikes: its tensor, or the steps of a graph output it feeds directly."""
    name = neuron.get("tensor", "")
    return tensors.get(steps_name(name), tensors.get(name))


def unrolled_steps(snn: onnx.ModelProto, info: SNNInfo, t_max: int, spike_counts: bool = True,
                   layer_stats: bool = False):
    """(model, spike-count output per neuron, per-neuron statistics outputs) for the unrolled SNN at
    T = t_max. The model's extra outputs are the readouts' [T*N, ...] tensors (named as in
    info.readouts), each neuron's spike count per step, and with `layer_stats` each neuron's
    summed weighted spikes and spike count over the T steps ([N * neurons], see _over_steps)."""
    if info.portable and info.portable_steps == "written" and t_max != info.timesteps:
        raise UserError(f"this {param('portable')} model has its {info.timesteps} steps written out and runs at T="
                        f"{info.timesteps} only (asked for T={t_max}): evaluate with {param('timesteps')} "
                        f"{info.timesteps} (shorter "
                        f"windows are read from that run), or convert with {param('portable_steps')} scan")
    graph = gs.import_onnx(snn)
    b = Builder(graph, default_opset(snn), "onnx2snn.eval")
    tensors = graph.tensors()
    if T_NAME in tensors:
        tensors[T_NAME].values = np.array([t_max], np.int64)
    for node in graph.nodes:
        if node.op in ("IFNeuron", "SpikingMaxPool"):
            node.attrs["timesteps"] = t_max
    extra, counts, stats = [], [], []
    levels = _burst_thetas(snn, info) if (spike_counts or layer_stats) else {}
    for neuron in info.neurons if (spike_counts or layer_stats) else []:
        spikes = _spikes(tensors, neuron)
        if spikes is None:
            continue
        b.prefix = f"{neuron['name']}/eval"
        if spike_counts:
            per_step = _spike_count(b, spikes, [t_max, -1], levels.get(neuron["name"]))
            per_step.name = f"{neuron['name']}/spike_count"
            counts.append((neuron["name"], per_step.name))
            extra.append(per_step)
        if layer_stats:
            total, fired = _over_steps(b, spikes, t_max, levels.get(neuron["name"]))
            stats.append((neuron["name"], total.name, fired.name))
            extra += [total, fired]
    for r in info.readouts:
        t = tensors[r["steps"]]
        t.dtype = np.float32
        extra.append(t)
    graph.outputs = extra          # the model's own outputs (maybe maps or sequences) are not needed
    return gs.export_onnx(graph.cleanup(), do_type_check=False), counts, stats


def loop_history(snn: onnx.ModelProto, info: SNNInfo, t_max: int, layer_stats: bool = False):
    """(model, spike-count history per neuron, readout history names, per-neuron statistics) for a
    looped SNN at T = t_max: the Loop also emits, per iteration (scan outputs), each readout's
    accumulated sum and each neuron's spike count; with `layer_stats` also each neuron's summed
    weighted spikes and spike count over the iteration's K steps ([iterations, N * neurons])."""
    graph = gs.import_onnx(with_timesteps(snn, info, t_max))
    loop = next(n for n in graph.nodes if n.op in ("Loop", "Scan"))
    body: gs.Graph = loop.attrs["body"]
    b = Builder(body, default_opset(snn), "onnx2snn.eval")
    inside = body.tensors()
    counts, histories, stats = [], [], []

    emitted = []

    def emit(tensor, name: str, shape) -> str:
        tensor.dtype = np.float32
        tensor.shape = shape        # a Scan (--loop-op scan) wants every body output's shape set
        body.outputs = list(body.outputs) + [tensor]
        out = gs.Variable(name, np.float32)
        loop.outputs = list(loop.outputs) + [out]
        emitted.append(out)
        return name

    levels = _burst_thetas(snn, info)
    for neuron in info.neurons:
        spikes = _spikes(inside, neuron)
        if spikes is None:
            continue
        b.prefix = f"{neuron['name']}/eval"
        counts.append((neuron["name"], emit(_spike_count(b, spikes, None, levels.get(neuron["name"])),
                                            f"{neuron['name']}/eval/counts", [])))
        if layer_stats:
            total, fired = _over_steps(b, spikes, info.chunk, levels.get(neuron["name"]))
            stats.append((neuron["name"], emit(total, f"{neuron['name']}/eval/spike_sums", [None]),
                          emit(fired, f"{neuron['name']}/eval/fire_counts", [None])))
    for r in info.readouts:
        b.prefix = f"{r['acc']}/eval"
        copy = b.op("Identity", [inside[r["acc"]]])
        histories.append(emit(copy, f"{r['acc']}/history", inside[r["acc"]].shape))
    graph.outputs = emitted        # the model's own outputs (maybe maps or sequences) are not needed
    return gs.export_onnx(graph.cleanup(), do_type_check=False), counts, histories, stats


def carried_states(model: onnx.ModelProto) -> tuple:
    """(first, later, pairs) for an unrolled simulation graph (`unrolled_steps`; custom-op form):
    `first` also returns the state every IFNeuron (membrane potential) and SpikingMaxPool (summed
    inputs and running peak) holds after its steps; `later` also takes those states as inputs and
    starts from them instead of the initial potential. pairs: (later's input, the output it continues)
    in the order of the graph outputs added. Running `first` on steps 1..S and `later` on the next
    steps with the previous run's states is the simulation of all the steps."""
    first, later = onnx.ModelProto(), onnx.ModelProto()
    first.CopyFrom(model)
    later.CopyFrom(model)
    pairs = []
    for graph, takes in ((first.graph, False), (later.graph, True)):
        k = 0
        for node in graph.node:
            if node.domain != DOMAIN or node.op_type not in STATES:
                continue
            for i, o in node_states(node):
                name = f"onnx2snn.state/{k}/{node.op_type}/{o}"
                k += 1
                while len(node.output) <= o:
                    node.output.append("")
                if node.output[o]:
                    raise ValueError(f"{node.name}: its state output is used already")
                node.output[o] = name
                graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                if takes:
                    while len(node.input) <= i:
                        node.input.append("")
                    node.input[i] = name + "/in"
                    graph.input.append(onnx.helper.make_tensor_value_info(name + "/in", onnx.TensorProto.FLOAT, None))
                    pairs.append((name + "/in", name))
        _compensation_states(graph, takes, pairs)
    return first, later, pairs


def _compensation_states(graph: onnx.GraphProto, takes: bool, pairs: list) -> None:
    """carried_states for expectation compensation (compensate.py): each state's zero constant
    becomes an input of `later`, its value after the run (the last step of the node that holds it,
    [P, S, R] -> [P, 1, R]; steps done + S for STEPS_DONE) an output."""
    starts = [i for i in graph.initializer if compensate.is_state(i.name) and i.name.count("/out/") == 0]
    if not starts:
        return
    nodes = {n.name: n for n in graph.node}
    for init in starts:
        out = init.name + "/out"
        if init.name == compensate.STEPS_DONE:
            steps = onnx.helper.make_node("Cast", [T_NAME], [out + "/steps"], to=onnx.TensorProto.FLOAT)
            scalar = onnx.helper.make_node("Squeeze", [out + "/steps"], [out + "/scalar"])
            graph.node.extend([steps, scalar, onnx.helper.make_node("Add", [init.name, out + "/scalar"], [out])])
        else:
            holder = nodes[init.name + compensate.HOLDS]
            for name, value in ((out + "/start", [-1]), (out + "/end", [2 ** 62]), (out + "/axis", [1])):
                graph.initializer.append(onnx.numpy_helper.from_array(np.array(value, np.int64), name))
            graph.node.append(onnx.helper.make_node("Slice", [holder.output[0], out + "/start", out + "/end",
                                                              out + "/axis"], [out]))
        graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
        if takes:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, onnx.TensorProto.FLOAT, None))
            pairs.append((init.name, out))
    if takes:
        names = {i.name for i in starts}
        kept = [i for i in graph.initializer if i.name not in names]
        del graph.initializer[:]
        graph.initializer.extend(kept)


def neuron_thresholds(snn: onnx.ModelProto, info: SNNInfo) -> dict:
    """neuron name -> its thresholds (float32 [C] or [1]), read from the graph's constants (main
    graph or loop body; custom-op or portable form)."""
    found = {}

    def walk(graph):
        for init in graph.initializer:
            for suffix in (".theta", ".theta_b"):
                if init.name.endswith(suffix):
                    found.setdefault(init.name[:-len(suffix)], onnx.numpy_helper.to_array(init).reshape(-1))
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
    walk(snn.graph)
    return {n["name"]: found[n["name"]] for n in info.neurons if n["name"] in found}


def head(snn: onnx.ModelProto, info: SNNInfo, outputs) -> onnx.ModelProto:
    """The part of the SNN after the readout that computes `outputs` (a name or a list of names),
    taking the averaged tensors as inputs."""
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    graph = gs.import_onnx(snn)
    tensors = graph.tensors()
    means = []
    for r in info.readouts:
        t = tensors[r["mean"]]
        t.inputs.clear()
        t.dtype = np.float32
        means.append(t)
    graph.inputs = list(graph.inputs) + means
    graph.outputs = [tensors[o] for o in outputs]
    graph.cleanup()
    return gs.export_onnx(graph, do_type_check=False)


def has_delay_constant(snn: onnx.ModelProto) -> bool:
    """Whether a looped SNN names its delay (converted by onnx2snn 0.1 after the T sweep came in)."""
    found = []

    def walk(graph):
        found.extend(i.name for i in graph.initializer if i.name == DELAY_NAME)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
    walk(snn.graph)
    return bool(found)


def with_timesteps(snn: onnx.ModelProto, info: SNNInfo, t: int, delay: int | None = None) -> onnx.ModelProto:
    """A looped SNN set to run `t` steps, averaging from step `delay` (default: its own). Its trip
    count, step limit and delay are named initializers, in the main graph or in the Loop body."""
    model = onnx.ModelProto()
    model.CopyFrom(snn)
    values = {TRIP_NAME: -(-t // info.chunk), STEPS_NAME: t}
    if delay is not None and delay != info.delay:
        if not has_delay_constant(snn):
            raise UserError(f"the looped model's delay D={info.delay} is built in (converted by an older onnx2snn): "
                            f"evaluate it with its own delay, or convert it again")
        values[DELAY_NAME] = values[DELAY_NAME + "/readout"] = delay

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


def with_means(model: onnx.ModelProto, tensors: dict, window: tuple | None = None) -> tuple:
    """(model, output names): `model` returning, instead of its outputs, the mean of each tensor in
    `tensors` (name -> axes) over those axes (a time-folded tensor's axis 0 holds steps and samples):
    statistics reduced in the graph, so no activation leaves it. `window` (steps, first): the
    tensors are time-folded over `steps` steps and only steps first..steps-1 are averaged."""
    graph = gs.import_onnx(model)
    b = Builder(graph, default_opset(model), "onnx2snn.stats")
    found = graph.tensors()
    outs = []
    for name, axes in tensors.items():
        b.prefix = f"{name}/mean"
        x = found[name]
        if window is not None:
            steps, first = window
            x = b.reshape(x, b.concat([b.const(np.array([steps, -1], np.int64)), b.shape_tail(x)], dtype=np.int64))
            if first:
                x = b.op("Slice", [x, b.const(np.array([first], np.int64)), b.const(np.array([steps], np.int64)),
                                   b.const(np.array([0], np.int64))])
            axes = [0] + [a + 1 for a in axes]
        mean = b.reduce("ReduceMean", x, list(axes), keepdims=0)
        mean.name = f"{name}/mean"
        outs.append(mean)
    graph.outputs = outs
    return gs.export_onnx(graph.cleanup(), do_type_check=False), [o.name for o in outs]


def channel_axes(axis: int, rank: int) -> list:
    """Every axis but the channel axis (per-channel statistics)."""
    return [a for a in range(rank) if a != axis] if rank > 1 else [0]
