"""The SNN on other runtimes: onnxruntime (any model), OpenVINO and tract (portable models)."""
from __future__ import annotations

import importlib

import onnx

from ..errors import UserError, param
from ..graph.onnx_io import uses_domain
from ..ops.neuron import DOMAIN
from .sessions import run_checked, session

RUNTIMES = ("onnxruntime", "openvino", "tract")
_PACKAGES = {"openvino": "openvino", "tract": "tract"}


def backend(name: str, model_path, threads: int = 0):
    """A function feeds -> {output name: array} running the model at `model_path` on `name`:
    onnxruntime (any model), OpenVINO or tract (portable models: standard ONNX ops only)."""
    if name not in RUNTIMES:
        raise UserError(f"{param('runtime_name')} {name}: expected one of {', '.join(RUNTIMES)}")
    proto = onnx.load(str(model_path), load_external_data=False)
    outputs = [o.name for o in proto.graph.output]
    if name == "onnxruntime":
        sess = session(str(model_path), threads)
        return lambda feeds: dict(zip(outputs, run_checked(sess, outputs, feeds, "run")))
    if uses_domain(proto, DOMAIN):
        raise UserError(f"{param('runtime_name')} {name}: {model_path} uses the {DOMAIN} operators, which only "
                        f"onnxruntime "
                        f"loads; convert with {param('portable')}")
    try:
        module = importlib.import_module(_PACKAGES[name])   # optional: the onnx2snn[runtimes] extra
    except ImportError:
        raise UserError(f"{param('runtime_name')} {name}: the Python package '{_PACKAGES[name]}' is not installed "
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
        raise UserError(f"{param('runtime_name')} {name}: cannot load {model_path}: {_first_line(err)}") from None

    def checked(feeds):
        try:
            return run(feeds)
        except Exception as err:
            raise UserError(f"{param('runtime_name')} {name}: running {model_path} failed: "
                            f"{_first_line(err)}") from None
    return checked


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


class RunJob:
    """`onnx2snn run` on a cluster's workers: the model's bytes, written to a file of the worker's
    own (the runtimes load paths; the name keeps the driver's for messages), then run on `name`."""

    def __init__(self, name: str, model_path, outputs: list):
        from pathlib import Path
        self.name, self.file, self.outputs = name, Path(model_path).name, outputs
        self.data = Path(model_path).read_bytes()

    def build(self, threads: int = 0):
        import tempfile
        from pathlib import Path
        folder = tempfile.mkdtemp(prefix="onnx2snn-run-")      # lives as long as the worker process
        path = Path(folder) / self.file
        path.write_bytes(self.data)
        run = backend(self.name, path, threads)

        def outputs(feeds: dict, labels=None) -> dict:
            values = run(feeds)
            return {n: values[n] for n in self.outputs}
        return outputs
