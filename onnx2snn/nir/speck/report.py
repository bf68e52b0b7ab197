"""What --target speck reports: per Speck layer (core) its shapes, quantisation, memory and
problems, and for the graph what does not fit, how the input must be presented and what stays
on the host."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import UserError, param
from .limits import CORES, LIMITS, WHERE, sinabs_version


@dataclass
class SpeckLayer:
    """One Speck layer (core): a weight node, its IF and the pooling towards its destinations."""
    index: int                      # 1-based, in the graph's topological order
    op: str                         # the weight node's NIR type (Conv2d, Affine, Linear)
    weight: str                     # NIR node names
    neuron: str
    kind: str                       # "conv" or "linear" (an Affine/Linear: a conv with kernel = input size)
    kernel: tuple
    stride: tuple
    padding: tuple
    in_shape: tuple                 # (C, H, W) the core receives
    neuron_shape: tuple             # (C, H, W) of its neurons
    out_shape: tuple                # after the pooling of its first chip destination (= neuron_shape without)
    sources: list                   # "input" or the weight node of the source layer
    destinations: list              # {"layer": weight node, "pooling": k, "pools": [...]} chip destinations
    pools: list = field(default_factory=list)   # SumPool2d nodes of the layer
    folded: list = field(default_factory=list)  # Scale nodes folded into the weights
    scale: float | None = None      # integer = scale * folded NIR value
    threshold: int | None = None    # integer threshold (the folded 1 times the scale)
    weight_range: tuple | None = None
    bias_range: tuple | None = None
    v0_range: tuple | None = None
    error: dict = field(default_factory=dict)   # quantisation errors
    chip: dict = field(default_factory=dict)    # what the core's configuration would hold
    memory: dict | None = None      # kernel/neuron Ki as sinabs computes, bias entries
    cores: list | None = None       # cores whose memory fits the layer
    core: int | None = None         # the assigned core
    notes: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def nodes(self) -> list:
        return [self.weight] + self.folded + [self.neuron] + self.pools

    def to_dict(self) -> dict:
        return jsonable({
            "index": self.index, "nodes": self.nodes, "op": self.op, "weight": self.weight, "neuron": self.neuron,
            "kind": self.kind, "kernel": self.kernel, "stride": self.stride, "padding": self.padding,
            "in_shape": self.in_shape, "neuron_shape": self.neuron_shape, "out_shape": self.out_shape,
            "sources": self.sources, "destinations": self.destinations, "folded": self.folded,
            "scale": self.scale, "threshold": self.threshold, "weight_range": self.weight_range,
            "bias_range": self.bias_range, "v0_range": self.v0_range, "error": self.error, "chip": self.chip,
            "memory": self.memory, "cores": self.cores, "core": self.core, "notes": self.notes,
            "problems": self.problems})


@dataclass
class SpeckReport:
    layers: list
    problems: list                  # graph-level (and nodes outside any layer)
    notes: list
    host: list                      # what runs on the host around the chip
    input: dict                     # how the input must be presented
    memory_checked: bool
    memory_note: str
    timesteps: int | None = None
    _quantised: dict = field(default_factory=dict, repr=False)   # node -> new parameters

    @property
    def all_problems(self) -> list:
        return self.problems + [p for layer in self.layers for p in layer.problems]

    @property
    def fits(self):
        """True: every rule holds and the memory fits; False: something does not fit (see the
        problems); None: no rule broken but the memory was not checked (sinabs not installed)."""
        if self.all_problems:
            return False
        return True if self.memory_checked else None

    def raise_if_unfit(self) -> None:
        """UserError (one line) listing what does not fit; also when the memory could not be checked."""
        problems = self.all_problems
        if problems:
            shown = "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
            raise UserError(f"{WHERE}: {len(problems)} problem(s): {shown}")
        if not self.memory_checked:
            raise UserError(f"{WHERE}: the layer rules hold but the memory was {self.memory_note}; "
                            f"pip install {param('no_deps')} sinabs (its validator needs only numpy; never samna) to "
                            f"check it")

    def to_dict(self) -> dict:
        return jsonable({
            "target": "speck", "fits": self.fits, "memory_checked": self.memory_checked,
            "memory_note": self.memory_note, "sinabs": sinabs_version() if self.memory_checked else None,
            "layers": [layer.to_dict() for layer in self.layers], "problems": self.problems,
            "all_problems": self.all_problems, "notes": self.notes, "host": self.host, "input": self.input,
            "limits": {k: {"value": v, "source": s} for k, (v, s) in LIMITS.items()}})

    def text(self) -> str:
        rows = [("#", "nodes", "kind", "kernel", "in -> out", "scale", "thr", "w err", "mem K/N Ki", "core")]
        for L in self.layers:
            mem = "-" if L.memory is None else f"{L.memory['kernel_ki']:g}/{L.memory['neuron_ki']:g}"
            rows.append((str(L.index), "+".join(L.nodes), L.kind, "x".join(map(str, L.kernel)),
                         f"{shape_text(L.in_shape)} -> {shape_text(L.out_shape)}",
                         "-" if L.scale is None else f"{L.scale:g}",
                         "-" if L.threshold is None else str(L.threshold),
                         "-" if "weight_max_rel" not in L.error else f"{100 * L.error['weight_max_rel']:.2f}%",
                         mem, "-" if L.core is None else str(L.core)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"Speck check: {len(self.layers)} layer(s) on {len(CORES)} cores; "
                 + {True: "fits", False: "does NOT fit", None: "no rule broken, memory " + self.memory_note}[self.fits]]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        for L in self.layers:
            for p in L.problems:
                lines.append(f"  layer {L.index}: PROBLEM {p}")
        for p in self.problems:
            lines.append(f"  PROBLEM {p}")
        if not self.memory_checked:
            lines.append(f"  memory: {self.memory_note}")
        lines.append(f"  input: {self.input.get('presentation', '')}")
        for h in self.host:
            lines.append(f"  host: {h}")
        for L in self.layers:
            for n in L.notes:
                lines.append(f"  layer {L.index} note: {n}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)


def shape_text(s) -> str:
    return "x".join(str(int(d)) for d in s)


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x
