"""NIR files: `export-nir` (and convert --nir), `run-nir`, and the verdict `inspect --nir` gives.

A NIR file holds the spiking part of the SNN, from its graph input to the readout. What runs on the
host sits beside it as small ONNX files, named in the graph's metadata (relative to the .nir):

    host_pre    the nodes before the graph input, run once per sample (current input coding only):
                the model's inputs -> the currents the graph's Input nodes take
    host_head   the nodes after the readout (heads, Softmax, ArgMax, ...): the readout means ->
                the model's outputs

With both, `run-nir` turns the same data `onnx2snn run` reads into the same outputs. The graph's
metadata also keeps the model's input signature and preprocessing, so `run-nir` needs only the .nir.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from ..errors import InternalError, UserError, param
from ..files import Files, write_atomic
from ..graph.onnx_io import uses_domain
from ..ops.neuron import DOMAIN
from .export import load_nir, to_nir
from .simulate import run_nir

log = logging.getLogger(__name__)


# ---- export ----------------------------------------------------------------------------------------

def host_paths(output) -> dict:
    """Where export_file writes the host parts of the NIR file `output` (when there are any)."""
    out = Path(output)
    return {"host_pre": out.with_name(f"{out.stem}.pre.onnx"), "host_head": out.with_name(f"{out.stem}.head.onnx")}


def check_outputs(files: Files, output, flag: str, others=()) -> Path:
    """Check the NIR file `output` and its host parts beside it as outputs, before any work: none of
    them is an input (files) or one of the command's `others` outputs."""
    out = Path(output)
    if out.suffix != ".nir":
        raise UserError(f"{flag} {out}: expected a .nir file name")
    files.output(out, flag)
    taken = {Path(o).resolve() for o in others}
    for part in host_paths(out).values():
        files.output(part, f"{flag} {out} (its host part {part.name})")
        if part.resolve() in taken:
            raise UserError(f"{flag} {out}: its host part {part.name} would overwrite another output of this command")
    return out


def export_file(snn: onnx.ModelProto, output, target: str | None = None, where: str = "export-nir") -> tuple:
    """Write `snn` (unrolled, custom-op form) as the NIR graph `output` with its host parts beside
    it; every file written atomically, the .nir last (it never names a file that is not there).
    `target` "speck": the graph is checked against Speck (speck/) and, when it fits, written
    quantised; when it does not (or its memory could not be checked) nothing is written.
    Returns (graph, info, {"nir": path|None, "host_pre": path|None, "host_head": path|None},
    the SpeckReport or None)."""
    nir = load_nir()
    out = Path(output)
    if out.suffix != ".nir":
        raise UserError(f"{where}: {param('output')} {out}: expected a .nir file name")
    if target not in (None, "speck"):
        raise UserError(f"{where}: {param('target')} {target}: expected speck")
    graph, info = to_nir(snn)
    report = None
    if target == "speck":
        from .speck import check_speck, quantise_speck
        report = check_speck(graph, info)
        if report.fits is not True:
            return graph, info, {"nir": None, "host_pre": None, "host_head": None}, report
        graph = quantise_speck(graph, report)
    pre, head = host_parts(snn, info)
    written = {"nir": out, "host_pre": None, "host_head": None}
    for key, part in (("host_pre", pre), ("host_head", head)):
        if part is not None:
            path = host_paths(out)[key]
            write_atomic(path, part.SerializeToString(), param("output"))
            written[key] = path
            graph.metadata[key] = path.name
    graph.metadata.update(_signature(snn, info))
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.resolve().parent)
    os.close(fd)
    try:
        nir.write(tmp, graph)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return graph, info, written, report


def node_counts(graph) -> dict:
    """NIR node kind -> how many the graph holds."""
    kinds = {}
    for node in graph.nodes.values():
        kinds[type(node).__name__] = kinds.get(type(node).__name__, 0) + 1
    return dict(sorted(kinds.items()))


def summary(graph, info: dict, written: dict) -> str:
    """What export-nir wrote, for people."""
    kinds = node_counts(graph)
    lines = [f"wrote {written['nir']}: " + ", ".join(f"{v} {k}" for k, v in kinds.items())
             + f"; T={info['timesteps']}, D={info['delay']}, readout averaged over steps {info['delay'] + 1}.."
             + f"{info['timesteps']}; reset by subtraction, firing v > v_threshold (metadata)"]
    if info["input_coding"] == "direct":
        lines.append("input: the image, fed unchanged at every step (direct coding)")
    else:
        lines.append(f"input: the current into the first neurons; {written['host_pre'].name} computes it on the "
                     f"host ({info['host_inputs_reason']})")
    after = [h["node"] for h in info["host"] if h["when"] == "after"]
    if written["host_head"] is not None:
        lines.append(f"after the readout, on the host ({written['host_head'].name}): {', '.join(after)}")
    if "speck" in (graph.metadata or {}):
        lines.append("quantised for Speck: integer weights and biases (8-bit) and thresholds (16-bit), one scale "
                     "per layer ('speck_scale' on each weight node and IF)")
    scales = sorted(name for name, node in graph.nodes.items() if type(node).__name__ == "Scale")
    if scales:
        lines.append(f"{len(scales)} Scale node(s) where the thresholds could not be folded: "
                     + ", ".join(scales[:8]) + (" ..." if len(scales) > 8 else ""))
    return "\n".join(lines)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _signature(snn: onnx.ModelProto, info: dict) -> dict:
    """The model's inputs, outputs and preprocessing, for run-nir's data reading and output names."""
    inits = {i.name for i in snn.graph.initializer}
    inputs = [{
        "name": i.name, "elem_type": i.type.tensor_type.elem_type,
        "shape": [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                  for d in i.type.tensor_type.shape.dim] if i.type.tensor_type.HasField("shape") else None}
        for i in snn.graph.input if i.name not in inits]
    meta = {p.key: p.value for p in snn.metadata_props}
    out = {"onnx_inputs": json.dumps(inputs), "inputs": json.dumps(info["inputs"]),
           "onnx_outputs": json.dumps([o.name for o in snn.graph.output if o.type.HasField("tensor_type")])}
    if "onnx2snn.preprocessing" in meta:
        out["preprocessing"] = meta["onnx2snn.preprocessing"]
    return out


def host_parts(snn: onnx.ModelProto, info: dict) -> tuple:
    """(ONNX model of the nodes before the graph input or None, of the nodes after the readout or
    None), cut out of the SNN with the tensors to_nir names in `info`."""
    pre = None
    if info["input_coding"] == "current":
        graph = gs.import_onnx(snn)
        tensors = graph.tensors()
        outs = []
        for entry in info["inputs"]:
            t = tensors[entry["onnx_tensor"]]
            t.dtype, t.shape = np.float32, ["N"] + list(entry["shape"])
            outs.append(t)
        graph.outputs = outs
        pre = _standalone(graph.cleanup(), snn, "the nodes before the NIR graph")
    means = {r["mean"]: r for r in info["readout"]}
    outputs = [o.name for o in snn.graph.output]
    head = None
    if any(name not in means for name in outputs):
        graph = gs.import_onnx(snn)
        tensors = graph.tensors()
        originals = {i.name: i for i in graph.inputs}
        cut = []
        for name, r in means.items():
            t = tensors[name]
            t.inputs.clear()                     # detached from the simulation that computes it
            t.dtype, t.shape = np.float32, ["N"] + list(r["shape"])
            cut.append(t)
        graph.inputs = cut
        graph.cleanup()
        used = {t.name for n in graph.nodes for t in n.inputs if isinstance(t, gs.Variable) and not t.inputs}
        graph.inputs = cut + [originals[n] for n in originals if n in used]
        unknown = used - {t.name for t in graph.inputs}
        if unknown:
            raise InternalError(f"export-nir: the head after the readout reads {sorted(unknown)}, which are "
                                "neither readouts nor model inputs")
        head = _standalone(graph.cleanup(), snn, "the head after the readout")
    return pre, head


def _standalone(graph: gs.Graph, snn: onnx.ModelProto, what: str) -> onnx.ModelProto:
    model = gs.export_onnx(graph, do_type_check=False)
    # the model's own inputs and outputs keep their declared types: graphsurgeon writes tensor types
    # only, and a sequence or map output (skl2onnx's ZipMap) would lose its type
    declared = {v.name: v for v in list(snn.graph.input) + list(snn.graph.output)}
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in declared:
            value.CopyFrom(declared[value.name])
    if uses_domain(model, DOMAIN):
        raise InternalError(f"export-nir: {what} contains onnx2snn operators")
    del model.opset_import[:]
    # every domain the model imports but ours: a host part may hold ai.onnx.ml post-processing (ZipMap, ...)
    model.opset_import.extend(o for o in snn.opset_import if o.domain != DOMAIN)
    model.ir_version = snn.ir_version
    model.producer_name = "onnx2snn export-nir"
    onnx.checker.check_model(model)
    return model


# ---- inspect --nir ---------------------------------------------------------------------------------

def verdict(analysis, keep_analog: bool = False, spikes: str = "binary", signed: bool = False) -> dict:
    """What the NIR export would do with this ANN, judged before calibration: the ANN converted
    with θ = 1 everywhere at T = 2, with the neuron asked (`spikes`, `signed`), and exported.
    {"exportable", "reason", "input_coding", "host"}."""
    from ..config import SNNConfig
    from ..snn import to_snn
    from ..calibration.thresholds import Thresholds
    try:
        snn, _ = to_snn(analysis, Thresholds.placeholder(analysis.activations),
                        SNNConfig(timesteps=2, keep_analog=keep_analog, spikes=spikes, signed=signed))
        _, info = to_nir(snn)
    except UserError as err:
        text = str(err)
        return {"exportable": False, "reason": text.split(": ", 1)[1] if text.startswith("to_nir: ") else text,
                "input_coding": None, "host": []}
    return {"exportable": True, "reason": info["host_inputs_reason"], "input_coding": info["input_coding"],
            "host": info["host"]}


# ---- run-nir ---------------------------------------------------------------------------------------

class NirFile:
    """A .nir written by export_file, with its host parts loaded (onnxruntime sessions)."""

    def __init__(self, path, files: Files | None = None):
        nir = load_nir()
        self.path = Path(path)
        if files is not None:
            files.input(self.path, "the NIR file")
        try:
            self.graph = nir.read(str(self.path))
        except Exception as err:    # noqa: BLE001 - h5py and nir raise their own types
            raise UserError(f"{self.path}: not a readable NIR file ({type(err).__name__}: "
                            f"{(str(err).splitlines() or [''])[0][:200]})") from None
        self.meta = dict(self.graph.metadata or {})
        missing = [k for k in ("timesteps", "readout", "onnx_inputs", "onnx_outputs") if k not in self.meta]
        if missing:
            raise UserError(f"{self.path}: not a NIR file written by onnx2snn export-nir (no {', '.join(missing)} "
                            "in its metadata)")
        self.readout = json.loads(_text(self.meta["readout"]))
        self.outputs = json.loads(_text(self.meta["onnx_outputs"]))
        self.inputs = json.loads(_text(self.meta["onnx_inputs"]))
        self.sessions = {}
        for key in ("host_pre", "host_head"):
            if key in self.meta:
                part = self.path.with_name(_text(self.meta[key]))
                if not part.is_file():
                    raise UserError(f"{self.path}: its host part {part.name} (metadata '{key}') is not beside it")
                if files is not None:
                    files.input(part, f"the NIR file's {key}")
                from ..runtime import session
                self.sessions[key] = session(str(part))

    def interface(self) -> onnx.ModelProto:
        """An ONNX model with the original model's inputs and preprocessing metadata: what the data
        readers (api.open_source) need to read --data for this graph."""
        vis = [helper.make_tensor_value_info(i["name"], i["elem_type"], i["shape"]) for i in self.inputs]
        nodes = [helper.make_node("Identity", [i["name"]], [f"{i['name']}/same"]) for i in self.inputs]
        outs = [helper.make_tensor_value_info(f"{i['name']}/same", i["elem_type"], i["shape"]) for i in self.inputs]
        model = helper.make_model(helper.make_graph(nodes, "nir-interface", vis, outs))
        if "preprocessing" in self.meta:
            helper.set_model_props(model, {"onnx2snn.preprocessing": _text(self.meta["preprocessing"])})
        return model

    def preprocess(self):
        """The conversion's preprocessing, kept in the metadata (data.Preprocess)."""
        from .. import data as D
        return D.Preprocess.from_json(_text(self.meta["preprocessing"])) if "preprocessing" in self.meta \
            else D.Preprocess()

    def __call__(self, feeds: dict, T: int | None = None, D: int | None = None) -> dict:
        """The model's outputs for one batch: host part, NIR simulation, head."""
        values = feeds
        if "host_pre" in self.sessions:
            sess = self.sessions["host_pre"]
            names = [o.name for o in sess.get_outputs()]
            values = dict(zip(names, sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()})))
        # each Input node of the graph takes a model input (direct coding) or a host part's output
        graph_in = {i["node"]: values[i["onnx_tensor"]] for i in json.loads(_text(self.meta["inputs"]))}
        result = run_nir(self.graph, graph_in, T, D)
        means = {r["mean"]: result["readout"][r["output"]] for r in self.readout}
        out = {name: means[name] for name in self.outputs if name in means}
        if "host_head" in self.sessions:
            sess = self.sessions["host_head"]
            wanted = [n for n in self.outputs if n not in out]
            head_in = {i.name: means[i.name] if i.name in means else feeds[i.name] for i in sess.get_inputs()}
            out.update(zip(wanted, sess.run(wanted, head_in)))
        return {name: out[name] for name in self.outputs}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
