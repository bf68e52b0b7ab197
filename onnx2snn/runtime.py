"""onnxruntime sessions: where the compiled operator library is, and sessions that register it
only for models that use its domain (portable SNNs and the ANN run without it)."""
from __future__ import annotations

import copy
import glob
import importlib
import os
from pathlib import Path

import onnx
import onnxruntime as ort

from . import events, fusion, layout
from .errors import UserError
from .model import uses_domain
from .neuron import DOMAIN

_ENV = "ONNX2SNN_OPS_LIBRARY"
_REWRITE_ENV = "ONNX2SNN_REWRITE"
_STATE = ort.capi.onnxruntime_pybind11_state
# onnxruntime's own log lines would break the one-line error rule: its errors reach us as exceptions
ort.set_default_logger_severity(4)


def library_path() -> str:
    """Path of the custom-op shared library bundled with the package (or $ONNX2SNN_OPS_LIBRARY).

    Ship this one file next to a converted model that uses the ai.onnx2snn domain; it depends on
    nothing but onnxruntime (loaded with RegisterCustomOpsLibrary in any language binding)."""
    override = os.environ.get(_ENV)
    if override:
        if not os.path.isfile(override):
            raise UserError(f"{_ENV}={override}: no such file")
        return override
    here = Path(__file__).resolve().parent
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


def _needs_library(model) -> bool:
    if isinstance(model, onnx.ModelProto):
        return uses_domain(model, DOMAIN)
    if isinstance(model, (bytes, bytearray)):
        proto = onnx.ModelProto()
        proto.ParseFromString(bytes(model))
        return uses_domain(proto, DOMAIN)
    return uses_domain(onnx.load(str(model), load_external_data=False), DOMAIN)


def session(model, threads: int = 0, in_order: bool = False, rewrite: bool = True,
            event_convs: bool = False) -> ort.InferenceSession:
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
    tensor stays alive (ResNet-32, T=128, 64 samples: 10 GB instead of 2.2 GB)."""
    opts = _options(threads, in_order)
    refused = strict = None
    if _needs_library(model):
        opts.register_custom_ops_library(library_path())
        if rewrite and os.environ.get(_REWRITE_ENV, "1") != "0":
            strict = os.environ.get(_REWRITE_ENV) == "strict"   # the tests: a failing rewrite is an error
            try:
                graph, optimized = session_graph(model, event_convs)
            except Exception:   # noqa: BLE001 - a graph the rewrite does not know runs as written
                if strict:
                    raise
                graph, optimized = None, False
            if graph is not None:
                fast = _options(threads, in_order)
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


def _options(threads: int, in_order: bool) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    if threads:
        opts.intra_op_num_threads = threads
    if in_order:
        opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return opts


def session_graph(model, event_convs: bool = False) -> tuple:
    """(graph, optimized): the graph `session` runs for a model using the operator library, or
    (None, False) when it would run the model as it is. With `optimized`, the graph is onnxruntime's
    own optimization of it for this CPU (blocked layout: weights reordered for this CPU's vector
    width), to be loaded with graph optimizations disabled; it suits this machine only. Save it
    (onnx.save) to run the fast graph from onnxruntime in another language on the same machine."""
    proto = copy.deepcopy(model) if isinstance(model, onnx.ModelProto) else _proto(model)
    changed = events.event_convs(proto) if event_convs else False
    # one shape inference for both: fusion keeps every tensor name it leaves, and the layout reads
    # ranks and non-batch dims, which the repeated inputs share with their tiled form
    shapes = layout.static_shapes(proto)
    changed |= fusion.fuse_inputs(proto, shapes)
    blocked = layout.blocked(proto, library_path(), shapes)
    if blocked is not None:
        return blocked, True
    return (proto if changed else None), False


def run_checked(sess: ort.InferenceSession, names, feeds: dict, what: str):
    """sess.run, with onnxruntime's complaints about the inputs, and allocation failures, turned
    into one-line user errors."""
    try:
        return sess.run(names, feeds)
    except (_STATE.InvalidArgument, _STATE.Fail, _STATE.RuntimeException) as err:
        first = str(err).strip().splitlines()[0]
        if "allocate" in first.lower() or "bad_alloc" in first.lower():
            size = first.rsplit("of size", 1)[-1].strip() if "of size" in first else "?"
            raise UserError(f"{what}: out of memory (onnxruntime could not allocate {size} bytes); use a "
                            "smaller --batch-size or fewer timesteps") from None
        if isinstance(err, _STATE.RuntimeException):
            raise
        raise UserError(f"{what}: onnxruntime rejected the data: {first}") from None
    except MemoryError:
        raise UserError(f"{what}: out of memory; use a smaller --batch-size or fewer timesteps") from None


# ---- other runtimes ---------------------------------------------------------------------------------
RUNTIMES = ("onnxruntime", "openvino", "tract")
_PACKAGES = {"openvino": "openvino", "tract": "tract"}


def backend(name: str, model_path, threads: int = 0):
    """A function feeds -> {output name: array} running the model at `model_path` on `name`:
    onnxruntime (any model), OpenVINO or tract (portable models: standard ONNX ops only)."""
    if name not in RUNTIMES:
        raise UserError(f"--runtime {name}: expected one of {', '.join(RUNTIMES)}")
    proto = onnx.load(str(model_path), load_external_data=False)
    outputs = [o.name for o in proto.graph.output]
    if name == "onnxruntime":
        sess = session(str(model_path), threads)
        return lambda feeds: dict(zip(outputs, run_checked(sess, outputs, feeds, "run")))
    if uses_domain(proto, DOMAIN):
        raise UserError(f"--runtime {name}: {model_path} uses the {DOMAIN} operators, which only onnxruntime "
                        "loads; convert with --portable")
    try:
        module = importlib.import_module(_PACKAGES[name])   # optional: the onnx2snn[runtimes] extra
    except ImportError:
        raise UserError(f"--runtime {name}: the Python package '{_PACKAGES[name]}' is not installed "
                        f"(pip install {_PACKAGES[name]}, or the onnx2snn[runtimes] extra)") from None
    inputs = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    try:
        if name == "openvino":
            # f32 throughout: on CPUs with bf16 units OpenVINO would otherwise lower the precision, and
            # thresholds compare exactly
            compiled = module.Core().compile_model(str(model_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

            def run(feeds):
                result = compiled({k: feeds[k] for k in inputs})
                return {n: result[compiled.output(n)] for n in outputs}
        else:
            runnable = module.onnx().load(str(model_path)).into_model().into_runnable()

            def run(feeds):
                return dict(zip(outputs, [t.to_numpy() for t in runnable.run([feeds[k] for k in inputs])]))
    except Exception as err:   # the runtimes raise their own types; the first line says what failed
        raise UserError(f"--runtime {name}: cannot load {model_path}: {_first_line(err)}") from None

    def checked(feeds):
        try:
            return run(feeds)
        except Exception as err:
            raise UserError(f"--runtime {name}: running {model_path} failed: {_first_line(err)}") from None
    return checked


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
