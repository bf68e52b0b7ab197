"""Loading, checking and normalising ONNX models; saving them atomically."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from .errors import UserError

log = logging.getLogger(__name__)

MIN_OPSET = 13  # Unsqueeze/ReduceSum with axes inputs, CumSum; older models are upgraded to it


def load(path) -> onnx.ModelProto:
    """Read, check and shape-infer an ONNX model; upgrade opsets older than MIN_OPSET."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, RuntimeError, ValueError) as err:
        raise UserError(f"{path}: not an ONNX model ({type(err).__name__})") from None
    if not model.graph.node:
        raise UserError(f"{path}: not an ONNX model (no graph nodes)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: invalid ONNX model: {first}") from None
    opset = default_opset(model)
    if opset < MIN_OPSET:
        log.info("upgrading %s from opset %d to %d", path, opset, MIN_OPSET)
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as err:  # the converter raises assorted types
            raise UserError(f"{path}: opset {opset} is too old and could not be upgraded to "
                            f"{MIN_OPSET} ({err})") from None
    return infer_shapes(model)


def load_proto(model) -> onnx.ModelProto:
    """A path or a ModelProto -> checked, shape-inferred ModelProto."""
    return infer_shapes(model) if isinstance(model, onnx.ModelProto) else load(model)


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:  # shape inference is best effort; the rewrite only needs ranks
        log.warning("shape inference failed: %s", err)
        return model


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import into onnx-graphsurgeon and fold constants (the one IR used until save)."""
    graph = gs.import_onnx(model)
    try:
        graph.fold_constants(error_ok=True).cleanup()
    except Exception as err:  # folding is an optimisation
        log.warning("constant folding skipped: %s", err)
    return graph.toposort()


def export(graph: gs.Graph, base: onnx.ModelProto | None = None, extra_opsets=()) -> onnx.ModelProto:
    model = gs.export_onnx(graph.cleanup().toposort(), do_type_check=False)
    if base is not None:
        model.ir_version = max(base.ir_version, 8)
        model.producer_name = "onnx2snn"
        del model.opset_import[:]
        model.opset_import.extend(base.opset_import)
    for domain, version in extra_opsets:
        if not any(o.domain == domain for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(domain, version))
    return model


def write_atomic(path, data: bytes, flag: str = "-o") -> Path:
    """Write `data` to `path` through a temporary file in the same folder, then rename: a reader
    never sees a half-written file and a failure leaves any previous file intact."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{flag} {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_atomic(model: onnx.ModelProto, path, refuse=()) -> Path:
    """Write `model` atomically, refusing to overwrite any path in `refuse` (the inputs)."""
    path = Path(path)
    for other in refuse:
        if Path(other).resolve() == path.resolve():
            raise UserError(f"{path}: refusing to overwrite the input model; choose another -o")
    return write_atomic(path, model.SerializeToString())


def set_metadata(model: onnx.ModelProto, items: dict) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in items.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            model.metadata_props.add(key=key, value=str(value))


def get_metadata(model: onnx.ModelProto) -> dict:
    return {p.key: p.value for p in model.metadata_props}


def is_constant(tensor) -> bool:
    return isinstance(tensor, gs.Constant)


def constant_value(tensor):
    """Value of a Constant tensor or of a tensor produced by a Constant node, else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        return np.asarray(tensor.inputs[0].attrs["value"].values)
    return None
