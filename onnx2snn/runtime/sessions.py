"""onnxruntime sessions: where the compiled operator library is, and sessions that register it
only for models that use its domain (portable SNNs and the ANN run without it)."""
from __future__ import annotations

import contextlib
import contextvars
import copy
import glob
import os
import re
from pathlib import Path

import onnx
import onnxruntime as ort

from . import events, fusion, layout
from .optimized import check_target, optimized_for, record
from ..errors import InternalError, UserError, param
from ..graph.onnx_io import all_graphs, onnxruntime_logging, uses_domain
from ..ops.neuron import DOMAIN

_ENV = "ONNX2SNN_OPS_LIBRARY"
_REWRITE_ENV = "ONNX2SNN_REWRITE"
_STATE = ort.capi.onnxruntime_pybind11_state
# onnxruntime's own log lines would break the one-line error rule: its errors reach us as exceptions
onnxruntime_logging()


def library_path() -> str:
    """Path of the custom-op shared library bundled with the package (or $ONNX2SNN_OPS_LIBRARY).

    Ship this one file next to a converted model that uses the ai.onnx2snn domain; it depends on
    nothing but onnxruntime (loaded with RegisterCustomOpsLibrary in any language binding)."""
    override = os.environ.get(_ENV)
    if override:
        if not os.path.isfile(override):
            raise UserError(f"{_ENV}={override}: no such file")
        return override
    here = Path(__file__).resolve().parent.parent      # the onnx2snn package
    found = sorted(glob.glob(str(here / "_ops*.so")) + glob.glob(str(here / "_ops*.pyd")) +
                   glob.glob(str(here / "_ops*.dylib")))
    if not found:
        raise UserError(
            "the onnx2snn operator library is not built: reinstall with `pip install .` "
            "(needs a C++ compiler and onnxruntime headers)")
    return found[0]


def _proto(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        proto = onnx.ModelProto()
        proto.ParseFromString(bytes(model))
        return proto
    return onnx.load(str(model))


def _header(model) -> onnx.ModelProto:
    """The model's graph and metadata (a file's external weights not read)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        proto = onnx.ModelProto()
        proto.ParseFromString(bytes(model))
        return proto
    return onnx.load(str(model), load_external_data=False)


def session(model, threads: int = 0, in_order: bool = False, rewrite: bool = True,
            event_convs: bool = False, arena: bool = True) -> ort.InferenceSession:
    """An onnxruntime CPU session for `model` (path, bytes or ModelProto); the operator library is
    registered when the model uses its domain.

    `rewrite`: for models using the library, the session runs an in-memory copy of the graph with
    the additions and time tiling in front of each neuron fused into it (fusion.py) and the neurons
    and probes in onnxruntime's blocked channel layout (layout.py): fewer passes over memory,
    bit-identical outputs. $ONNX2SNN_REWRITE=0 turns it off (the graph as written).
    `event_convs`: convolutions after neurons run event-driven (events.py; not bit-identical).

    A rewrite that fails, or whose graph onnxruntime refuses (another onnxruntime version's contrib
    operators, say), leaves the session on the graph as written ($ONNX2SNN_REWRITE=strict, as the
    tests set it, makes that an error instead).

    `in_order`: priority-based execution order. Evaluation graphs hang side branches (spike counts)
    off every neuron; in onnxruntime's default order those run late and every neuron's T*N-row
    tensor stays alive (ResNet-32, T=128, 64 samples: 10 GB instead of 2.2 GB).

    `arena=False`: memory goes back to the system after each run instead of staying in the
    session's arena (sessions run one after another that each fill the memory budget)."""
    opts = _options(threads, in_order, arena)
    refused = strict = None
    header = _header(model)
    if uses_domain(header, DOMAIN):
        opts.register_custom_ops_library(library_path())
        made = check_target(header)       # a file `onnx2snn optimize` wrote runs as it is
        if made and "blocked" in made["rewrites"]:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if rewrite and not made and os.environ.get(_REWRITE_ENV, "1") != "0":
            strict = os.environ.get(_REWRITE_ENV) == "strict"   # the tests: a failing rewrite is an error
            try:
                graph, optimized = session_graph(model, event_convs)
            except Exception:   # noqa: BLE001 - a graph the rewrite does not know runs as written
                if strict:
                    raise
                graph, optimized = None, False
            if graph is not None:
                fast = _options(threads, in_order, arena)
                fast.register_custom_ops_library(library_path())
                if optimized:      # already optimized for this CPU: loaded as it is
                    fast.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                try:
                    return ort.InferenceSession(graph.SerializeToString(), fast, providers=["CPUExecutionProvider"])
                except Exception as err:   # noqa: BLE001 - e.g. another onnxruntime's contrib operators:
                    refused = err            # the graph as written, whose own errors are reported below
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    try:
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except (_STATE.Fail, _STATE.InvalidGraph, _STATE.InvalidArgument, _STATE.NotImplemented,
            _STATE.InvalidProtobuf, _STATE.RuntimeException, _STATE.NoSuchFile) as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"onnxruntime cannot load the model: {first}") from None
    if strict and refused is not None:
        raise RuntimeError(f"the session rewrite broke a graph onnxruntime loads as written: {refused}")
    return sess


def _options(threads: int, in_order: bool, arena: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.log_severity_level = onnxruntime_logging()
    opts.enable_cpu_mem_arena = arena
    if threads:
        opts.intra_op_num_threads = threads
    if in_order:
        opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return opts


def session_graph(model, event_convs: bool = False) -> tuple:
    """(graph, optimized): the graph `session` runs for a model using the operator library, or
    (None, False) when it would run the model as it is. With `optimized`, the graph is onnxruntime's
    own optimization of it for this CPU (blocked layout: weights reordered for this CPU's vector
    width), to be loaded with graph optimizations disabled; it suits this machine only. `optimize`
    writes it, with its record, for onnxruntime in another language on the same machine."""
    proto = copy.deepcopy(model) if isinstance(model, onnx.ModelProto) else _proto(model)
    changed = events.event_convs(proto) if event_convs else False
    graph, rewrites = _rewrite(proto)
    if "blocked" in rewrites:
        return graph, True
    return (graph if changed or rewrites else None), False


def _rewrite(proto: onnx.ModelProto, blocked: bool = True) -> tuple:
    """(graph, rewrites): `proto`'s neuron inputs fused in place ("fused") and, with `blocked`, the
    result in onnxruntime's blocked layout for this CPU ("blocked", a new graph) where that changes it."""
    # one shape inference for both: fusion keeps every tensor name it leaves, and the layout reads
    # ranks and non-batch dims, which the repeated inputs share with their tiled form
    shapes = layout.static_shapes(proto)
    rewrites = ["fused"] if fusion.fuse_inputs(proto, shapes) else []
    laid_out = layout.blocked(proto, library_path(), shapes) if blocked else None
    if laid_out is not None:
        return laid_out, rewrites + ["blocked"]
    return proto, rewrites


def optimize(model: onnx.ModelProto, name: str = "the model", portable_only: bool = False) -> onnx.ModelProto:
    """`model` (a converted SNN) as `session` runs it on this machine, to be written to a file
    (`onnx2snn optimize`; optimized.py says what each rewrite means), its metadata kept and the
    rewrites recorded. `portable_only`: only the fused neuron inputs (any CPU and onnxruntime)."""
    if optimized_for(model) is not None:
        raise UserError(f"{name}: already optimized (onnx2snn optimize); optimize the converted file")
    graph, rewrites = _rewrite(copy.deepcopy(model), blocked=not portable_only)
    if not rewrites:
        raise UserError(f"{name}: nothing to optimize (no neuron input to fuse and no blocked layout on this "
                        "CPU); the converted file already runs as fast")
    return record(graph, model, rewrites)


# the conversion step running (runtime.step) and its ANN's node names, for naming them when a node
# onnx2snn built (one of its operators, or any node the ANN does not have) refuses its inputs
_STEP = contextvars.ContextVar("onnx2snn_step", default=None)
OPERATORS = ("IFNeuron", "ReLUXProbe", "SpikingMaxPool", "EventConv")   # the library's ops (register.cc)
_FAILED_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)' Status Message: (.*)")


@contextlib.contextmanager
def step(name: str, ann: onnx.ModelProto | None = None):
    """Marks the sessions run inside as conversion step `name`'s own (calibration, correction, ...)
    on graphs built from `ann`: a node the ANN does not have, or one of onnx2snn's operators,
    refusing its inputs there is onnx2snn's inconsistency, reported by step and node."""
    names = frozenset(n.name for g in all_graphs(ann.graph) for n in g.node) if ann is not None else frozenset()
    token = _STEP.set((name, names))
    try:
        yield
    finally:
        _STEP.reset(token)


def run_checked(sess: ort.InferenceSession, names, feeds: dict, what: str):
    """sess.run, with onnxruntime's complaints about the inputs, and allocation failures, turned
    into one-line errors: the user's (UserError) unless one of onnx2snn's operators refused what a
    conversion step built for it (InternalError)."""
    try:
        return sess.run(names, feeds)
    except (_STATE.InvalidArgument, _STATE.Fail, _STATE.RuntimeException) as err:
        first = str(err).strip().splitlines()[0]
        if "allocate" in first.lower() or "bad_alloc" in first.lower():
            size = first.rsplit("of size", 1)[-1].strip() if "of size" in first else "?"
            raise UserError(f"{what}: out of memory (onnxruntime could not allocate {size} bytes); use a "
                            f"smaller {param('batch_size')} or fewer timesteps") from None
        _raise_if_ours(first, what)
        if isinstance(err, _STATE.RuntimeException):
            raise
        raise UserError(f"{what}: onnxruntime rejected the data: {first}") from None
    except MemoryError:
        raise UserError(f"{what}: out of memory; use a smaller {param('batch_size')} or fewer timesteps") from None


def _raise_if_ours(message: str, what: str) -> None:
    """An error naming the step and the node when the failing node is one of the library's operators."""
    found = _FAILED_NODE.search(message)
    if found is None:
        return
    op, node, status = found.groups()
    status = re.sub(r"^/\S+:\d+\s+", "", status.strip())       # onnxruntime's source location
    running, ann_nodes = _STEP.get() or (None, frozenset())
    ours = op in OPERATORS
    if running is not None and (ours or node not in ann_nodes):
        what_node = f"onnx2snn's {op} operator at node '{node}'" if ours else f"the {op} node '{node}' onnx2snn added"
        raise InternalError(f"{running}: {what_node} refused the inputs onnx2snn built for it ({status}); this "
                            "is an inconsistency inside onnx2snn, not a problem with your data: please report it "
                            "with the model and the command") from None
    if not ours:
        return
    raise UserError(f"{what}: the {op} node '{node}' refused its input ({status.strip()}); if the data has the "
                    "shapes the model was converted for, this is an onnx2snn bug: please report it") from None
