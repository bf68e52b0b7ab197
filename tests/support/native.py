"""custom_ops/build_support.py (how the C++ operators find onnxruntime's headers and a compiler),
loaded from its file: custom_ops/ is the C++ sources' folder, not a Python package."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("build_support", ROOT / "custom_ops" / "build_support.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_support = _load()
