"""ONNX models in and out: load (check, shape inference, opset upgrade), import into
onnx-graphsurgeon, export, metadata, and the shape table read from inference."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from ..errors import UserError

log = logging.getLogger(__name__)
# onnx-graphsurgeon prints its warnings on stdout (e.g. for scikit-learn's map outputs), which would
# break `--json` output; onnx2snn reports what matters itself
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR

# onnxruntime's own log lines (severity 2 = warnings, 4 = fatal only): a command's output is its one-line
# errors and its tables; onnxruntime's errors reach us as exceptions. -v shows its warnings.
_ORT_SEVERITY = {"level": 4}


def onnxruntime_logging(verbose: bool | None = None) -> int:
    """The severity onnxruntime logs at, for every session this process makes (set with `verbose`;
    sessions with their own options read it back). Returns it."""
    if verbose is not None:
        _ORT_SEVERITY["level"] = 2 if verbose else 4
    import onnxruntime as ort
    ort.set_default_logger_severity(_ORT_SEVERITY["level"])
    return _ORT_SEVERITY["level"]


MIN_OPSET = 13  # Unsqueeze/ReduceSum with axes inputs, CumSum; older models are upgraded to it
_READ_ERRORS = (DecodeError, RuntimeError, ValueError, OSError, onnx.checker.ValidationError)


def read(path, what: str = "model") -> onnx.ModelProto:
    """Parse an ONNX file (with its external data) or fail with one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        model = onnx.load(str(path))
    except DecodeError:
        raise UserError(f"{path}: not an ONNX {what} (the file does not parse as ONNX protobuf)") from None
    except _READ_ERRORS as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path}: cannot read the {what} ({type(err).__name__}: {first})") from None
    if not model.graph.node:
        raise UserError(f"{path}: not an ONNX {what} (no graph nodes)")
    return model



def load(path) -> onnx.ModelProto:
    """Read, check and shape-infer an ONNX model; upgrade opsets older than MIN_OPSET."""
    return checked(read(path), str(path))


def checked(model: onnx.ModelProto, where: str = "model") -> onnx.ModelProto:
    """onnx.checker, the opset upgrade (older than MIN_OPSET) and shape inference."""
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{where}: invalid ONNX model: {first}") from None
    opset = default_opset(model)
    if opset < MIN_OPSET:
        log.info("upgrading %s from opset %d to %d", where, opset, MIN_OPSET)
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as err:  # the converter raises assorted types
            raise UserError(f"{where}: opset {opset} is too old and could not be upgraded to "
                            f"{MIN_OPSET} ({err})") from None
    return infer_shapes(model)


def load_proto(model) -> onnx.ModelProto:
    """A path or a ModelProto -> checked, upgraded, shape-inferred ModelProto."""
    if not isinstance(model, onnx.ModelProto):
        return load(model)
    return checked(model) if default_opset(model) < MIN_OPSET else infer_shapes(model)


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes from ONNX's own inference over the graph. The exporter's value_info records are
    hints, not facts (some exporters write stale ones): they are dropped before inference and
    kept only for tensors inference cannot type."""
    declared = list(model.graph.value_info)
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(bare, data_prop=True)
    except Exception as err:  # shape inference is best effort; the rewrite only needs ranks
        log.warning("shape inference failed: %s", err)
        return model
    known = {vi.name for vi in inferred.graph.value_info}
    hints = [vi for vi in declared if vi.name not in known]
    if not hints:
        return inferred
    inferred.graph.value_info.extend(hints)
    try:    # once more from the hints: what follows an op inference cannot type gets its shapes too
        return onnx.shape_inference.infer_shapes(inferred, data_prop=True)
    except Exception as err:  # noqa: BLE001 - best effort, as above
        log.warning("shape inference from the exporter's hints failed: %s", err)
        return inferred


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import into onnx-graphsurgeon and fold constants (the one IR used until save)."""
    graph = gs.import_onnx(model)
    # the importer keeps the model's own opset list, which export would extend in place: copy it
    graph.import_domains = [onnx.helper.make_opsetid(o.domain, o.version) for o in model.opset_import]
    try:
        onnxruntime_logging()                # graphsurgeon folds through onnxruntime sessions of its own
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


def uses_domain(model: onnx.ModelProto, domain: str) -> bool:
    """Whether any node of the model (subgraphs included) belongs to `domain`."""
    return any(node.domain == domain for graph in all_graphs(model.graph) for node in graph.node)


def subgraphs(node: onnx.NodeProto) -> list:
    """The graphs held by a node's attributes (a Loop's body, an If's branches)."""
    return [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]


def all_graphs(graph: onnx.GraphProto):
    """`graph` and every graph nested in it, outermost first."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from all_graphs(sub)


def set_metadata(model: onnx.ModelProto, items: dict) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in items.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            model.metadata_props.add(key=key, value=str(value))


def get_metadata(model: onnx.ModelProto) -> dict:
    return {p.key: p.value for p in model.metadata_props}


def shapes(model: onnx.ModelProto) -> dict:
    """tensor name -> inferred shape (ints, None for unknown dims) of a shape-inferred model."""
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def symbolic_shapes(model: onnx.ModelProto) -> dict:
    """tensor name -> inferred shape with symbolic dims kept: ints, names ("N", "unk__0"), None."""
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return out


def constant_value(tensor):
    """Value of a Constant tensor or of a tensor produced by a Constant node, else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        return np.asarray(tensor.inputs[0].attrs["value"].values)
    return None
