"""onnx2snn: training-free conversion of ONNX ReLU networks into spiking networks for onnxruntime."""
__version__ = "0.1.0"

from .api import Conversion, calibrate, convert, evaluate_file, load_snn, run, session  # noqa: E402
from .calibration import CalibConfig, Thresholds  # noqa: E402
from .data import Preprocess  # noqa: E402
from .errors import UserError  # noqa: E402
from .neuron import if_neuron  # noqa: E402
from .ops import library_path  # noqa: E402
from .rewrite import SNNConfig, to_snn  # noqa: E402

__all__ = ["Conversion", "calibrate", "convert", "evaluate_file", "load_snn", "run", "session",
           "CalibConfig", "Thresholds", "Preprocess", "UserError", "if_neuron", "library_path",
           "SNNConfig", "to_snn"]
