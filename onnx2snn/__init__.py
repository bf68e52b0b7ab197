"""onnx2snn: training-free conversion of ONNX ReLU networks into spiking networks for onnxruntime.

The public names below are imported on first use, so `import onnx2snn.cli` (the command line)
starts without loading onnxruntime.
"""
from importlib import import_module

from ._version import __version__

_EXPORTS = {
    "Conversion": "api", "calibrate": "api", "convert": "api", "evaluate_file": "api", "load_snn": "api",
    "optimize_file": "api", "run": "api", "session": "api",
    "CalibConfig": "config", "SNNConfig": "config",
    "Thresholds": "calibration.thresholds", "Preprocess": "data", "UserError": "errors",
    "if_neuron": "ops.neuron", "library_path": "runtime", "to_snn": "snn",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'onnx2snn' has no attribute {name!r}")
