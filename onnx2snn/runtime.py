"""onnxruntime sessions: where the compiled operator library is, and sessions that register it
only for models that use its domain (portable SNNs and the ANN run without it)."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import onnx
import onnxruntime as ort

from .errors import UserError
from .model import uses_domain
from .neuron import DOMAIN

_ENV = "ONNX2SNN_OPS_LIBRARY"
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


def _needs_library(model) -> bool:
    if isinstance(model, onnx.ModelProto):
        return uses_domain(model, DOMAIN)
    if isinstance(model, (bytes, bytearray)):
        proto = onnx.ModelProto()
        proto.ParseFromString(bytes(model))
        return uses_domain(proto, DOMAIN)
    return uses_domain(onnx.load(str(model), load_external_data=False), DOMAIN)


def session(model, threads: int = 0, in_order: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session for `model` (path, bytes or ModelProto); the operator library is
    registered when the model uses its domain.

    `in_order`: priority-based execution order. Evaluation graphs hang side branches (spike counts)
    off every neuron; in onnxruntime's default order those run late and every neuron's T*N-row
    tensor stays alive (ResNet-32, T=128, 64 samples: 10 GB instead of 2.2 GB)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    if _needs_library(model):
        opts.register_custom_ops_library(library_path())
    if threads:
        opts.intra_op_num_threads = threads
    if in_order:
        opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    try:
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except (_STATE.Fail, _STATE.InvalidGraph, _STATE.InvalidArgument, _STATE.NotImplemented,
            _STATE.InvalidProtobuf, _STATE.RuntimeException, _STATE.NoSuchFile) as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"onnxruntime cannot load the model: {first}") from None


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
