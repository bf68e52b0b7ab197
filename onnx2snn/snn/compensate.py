"""Expectation compensation (DESIGN §8): the non-linear nodes between neurons evaluated on the
running means of their inputs, their outputs turned back into per-step increments.

For an op f between neurons, with S_t the sum of its inputs over steps 1..t,

    y_t = t·f(S_t / t) − (t−1)·f(S_{t−1} / (t−1))

so its outputs summed over t steps are t·f(ā_t): the rate of the output is f of the input rates.
Linear ops commute with both sides, so a connected group of non-linear nodes (with the cheap
linear ops between them that keep the layout: sums, scalings, reductions) is compensated as one
*domain*: its time-varying inputs enter as running means (`entry`), the domain runs unchanged on
them, and each output that leaves it becomes increments again (`exit`). Weighted layers (Conv,
Gemm, MatMul with constant weights) never join a domain: they keep receiving spikes.

The construct is standard ONNX (CumSum, Range, Mul, Sub), so every form — custom-op or portable,
unrolled, looped, chunked — runs it, and a new op needs no new operator code. Its state is the
running sums at the entries, t·f(ā) at the exits and the number of steps done; the unrolled form
starts it from named zero constants (`state_name`, `STEPS_DONE`; the node `<name>/steps` holds the
state's values at each step, which evaluation in slices hands from one run to the next:
simulate.carried_states), the loop carries it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph.analyse import analog_nodes
from ..graph.onnx_io import symbolic_shapes
from .timefold import BIG

STATE = "onnx2snn.compensation/"
STEPS_DONE = STATE + "steps_done"      # float scalar: the steps before this run (0 in one run)
HOLDS = "/steps"                       # the node whose output's last row is a state's value after a run


def is_state(name: str) -> bool:
    return name == STEPS_DONE or name.startswith((STATE + "sum:", STATE + "previous:"))


def state_name(kind: str, tensor: str) -> str:
    """The zero constant a state starts from in one run ("sum" of an entry, "previous" of an exit)."""
    return f"{STATE}{kind}:{tensor}"


# linear ops that join a domain when every reader is in it: those that keep each tensor's layout (a
# reshape or transpose may move the batch axis, whose layout the entries and exits must know)
_ABSORB = {"Add", "Sub", "Sum", "Neg", "Mul", "Div", "Identity", "Dropout", "BatchNormalization", "ReduceMean",
           "ReduceSum", "GlobalAveragePool"}


@dataclass
class Domain:
    nodes: list          # the nodes evaluated on running means, topological order
    entries: list        # time-varying float tensors read by the domain (replaced by running means)
    exits: list          # domain outputs read outside it (replaced by increments)


def _is_float(t) -> bool:
    return t.dtype is None or np.dtype(t.dtype).kind == "f"


def domains(p) -> Domain | None:
    """The compensated nodes of a prepared graph (none with --keep-analog, where they run on each
    step's input) and the linear nodes absorbed around them; None when there are none."""
    if p.config.keep_analog:
        return None
    core = analog_nodes(p.graph, p.neurons, p.regions)
    if not core:
        return None
    inside = {id(n) for n in core}
    spiking = p.regions.spiking
    outputs = {id(t) for t in p.graph.outputs}
    changed = True
    while changed:         # linear ops all of whose readers are compensated join (no exit needed there)
        changed = False
        for node in reversed(p.ordered):
            if id(node) in inside or id(node) not in spiking or node.op not in _ABSORB:
                continue
            if not node.outputs or not all(_is_float(t) for t in node.outputs):
                continue
            readers = [c for t in node.outputs for c in t.outputs]
            if readers and all(id(c) in inside for c in readers) and not any(id(t) in outputs for t in node.outputs):
                inside.add(id(node))
                changed = True
    nodes = [n for n in p.ordered if id(n) in inside]
    varying = spiking | {id(n) for n in p.neurons}
    entries, exits, seen = [], [], set()
    for node in nodes:
        for t in node.inputs:
            if t.name and _is_float(t) and t.inputs and id(t.inputs[0]) in varying \
                    and id(t.inputs[0]) not in inside and id(t) not in seen:
                seen.add(id(t))
                entries.append(t)
        for t in node.outputs:
            if id(t) in outputs or any(id(c) not in inside for c in t.outputs):
                exits.append(t)
    return Domain(nodes, entries, exits)


def batch_axis(shape, batch_dim) -> int:
    """The axis of an ANN tensor that holds the batch (time is folded into it, time-major): the one
    dim equal to the model's batch symbol, else the one dim that is not a fixed size, else 0
    (attention written sequence-first, [L, N, E], has it on axis 1)."""
    if not shape:
        return 0
    if isinstance(batch_dim, str) and list(shape).count(batch_dim) == 1:
        return list(shape).index(batch_dim)
    free = [i for i, d in enumerate(shape) if not (isinstance(d, (int, np.integer)) and d > 0)]
    return free[0] if len(free) == 1 else 0


class Compensation:
    """Builds the entries and exits of a domain with the time fold of `p` (S steps per run).

    A tensor is viewed as [P, S, R]: P the product of the dims before its batch axis (1 for the
    usual batch-first tensors), S the steps, R the rest; running sums are over the S axis.
    `iteration`: a loop body's iteration (int64 scalar; iteration * S steps were done before it), or
    None (one run from step 1, or evaluation's later slices, through the STEPS_DONE constant);
    `state(kind, tensor, lead)` returns the tensor holding the state carried in ([P, 1, R]; None:
    a named zero constant, see the module docstring) and `carried(kind, tensor, value)` receives the
    state after the run."""

    def __init__(self, p, iteration=None, state=None, carried=None):
        self.p, self.b, self.fold = p, p.b, p.fold
        self.state = state or self._zero_state
        self.carried = carried or (lambda kind, tensor, value: None)
        b = self.b
        b.prefix = STATE + "steps"
        s = b.op("Cast", [p.steps], {"to": onnx.TensorProto.FLOAT})
        if iteration is not None:      # a loop body: iteration * K steps before this one
            self.steps_done = b.op("Cast", [b.op("Mul", [iteration, b.op("Squeeze", [p.steps], dtype=np.int64)],
                                                 dtype=np.int64)], {"to": onnx.TensorProto.FLOAT})
        else:
            self.steps_done = gs.Constant(STEPS_DONE, np.array(0, np.float32))
        ones = b.op("Range", [b.const(np.float32(1)), b.op("Add", [b.reshape(s, []), b.const(np.float32(1))]),
                              b.const(np.float32(1))])
        self.t = b.reshape(b.op("Add", [ones, self.steps_done]), [1, -1, 1])
        self.rows = {}
        self.symbols = symbolic_shapes(p.analysis.model)

    def lead(self, tensor) -> int:
        """P: the product of the (fixed) dims before the tensor's batch axis."""
        shape = self.symbols.get(tensor.name)
        axis = batch_axis(shape, self.p.batch_dim)
        return int(np.prod(shape[:axis])) if axis else 1

    def _rows(self, lead: int):
        if lead not in self.rows:
            self.b.prefix = STATE + "steps"
            self.rows[lead] = self.b.concat([self.b.const(np.array([lead], np.int64)), self.p.steps,
                                             self.b.const(np.array([-1], np.int64))], dtype=np.int64)
        return self.rows[lead]

    def _zero_state(self, kind: str, tensor, lead: int):
        return gs.Constant(state_name(kind, tensor.name), np.zeros((1, 1, 1), np.float32))

    def _steps(self, x, start: int, end: int):
        b = self.b
        return b.op("Slice", [x, b.const(np.array([start], np.int64)), b.const(np.array([end], np.int64)),
                              b.const(np.array([1], np.int64))])

    def entry(self, x):
        """Increments (time folded into the batch) -> running means (S_t / t), carrying the sums."""
        b = self.b
        lead = self.lead(x)
        rows = self._rows(lead)
        before = self.state("sum", x, lead)
        b.prefix = f"{x.name}/running_mean"
        sums = b.op("CumSum", [b.reshape(x, rows), b.const(np.array(1, np.int64))])
        sums = b.op("Add", [sums, before], name=state_name("sum", x.name) + HOLDS)
        self.carried("sum", x, self._steps(sums, -1, BIG))
        return b.reshape(b.op("Div", [sums, self.t]), b.op("Shape", [x], dtype=np.int64))

    def exit(self, g, out):
        """Values of f on running means -> increments t·g_t − (t−1)·g_{t−1} into `out`."""
        b = self.b
        lead = self.lead(out)
        rows = self._rows(lead)
        carried = self.state("previous", out, lead)
        b.prefix = f"{out.name}/compensated"
        scaled = b.op("Mul", [b.reshape(g, rows), self.t], name=state_name("previous", out.name) + HOLDS)
        first = self._steps(scaled, 0, 1)
        before = b.op("Expand", [carried, b.op("Shape", [first], dtype=np.int64)])
        previous = b.concat([before, self._steps(scaled, 0, -1)], axis=1)
        self.carried("previous", out, self._steps(scaled, -1, BIG))
        diff = b.op("Sub", [scaled, previous])
        return b.op("Reshape", [diff, b.op("Shape", [g], dtype=np.int64)], out=[out])


def apply(p, iteration=None, state=None, carried=None) -> Domain | None:
    """Rewrite the compensated domain of `p` in place (see Compensation for the arguments); the
    nodes it adds join `p.ordered` (they run on the steps, like the spiking region)."""
    d = domains(p)
    if d is None:
        return None
    c = Compensation(p, iteration, state, carried)
    inside = {id(n) for n in d.nodes}
    for x in d.entries:
        mean = c.entry(x)
        for node in d.nodes:
            node.inputs = [mean if t is x else t for t in node.inputs]
    for t in d.exits:
        inner = gs.Variable(f"{t.name}/on_means", t.dtype)
        producer = t.inputs[0]
        producer.outputs = [inner if o is t else o for o in producer.outputs]
        readers = [n for n in list(t.outputs) if id(n) in inside]
        c.exit(inner, t)
        for node in readers:       # domain nodes keep reading the values on means
            node.inputs = [inner if i is t else i for i in node.inputs]
    made = [n for n in p.graph.nodes if n.name.startswith(STATE) or "/running_mean/" in n.name
            or "/compensated/" in n.name]
    known = {id(n) for n in p.ordered}
    p.ordered.extend(n for n in made if id(n) not in known)
    p.regions.spiking.update(id(n) for n in made)
    return d
