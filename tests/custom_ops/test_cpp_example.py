"""examples/cpp builds against onnxruntime's shared library and runs a converted model from C++
with the same outputs as Python (custom-op model with the library, a portable one without, and the
file `onnx2snn optimize` writes for this machine)."""
import glob
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from onnx2snn import SNNConfig, library_path, runtime, to_snn

ROOT = Path(__file__).resolve().parents[2]
from tests.support.native import build_support
from tools.fixtures.graphs import exact_runtime_model


@pytest.fixture(scope="module")
def snn_run(tmp_path_factory):
    if shutil.which("make") is None or shutil.which("g++") is None:
        pytest.skip("make and g++ are needed to build the C++ example")
    libs = glob.glob(str(Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime.so*"))
    if not libs:
        pytest.skip("this onnxruntime wheel ships no libonnxruntime.so")
    out = tmp_path_factory.mktemp("cpp") / "snn_run"
    proc = subprocess.run(["make", "-s", "-C", str(ROOT / "examples" / "cpp"),
                           f"ORT_INCLUDE={build_support.find_onnxruntime_headers()}", f"ORT_LIB={libs[0]}",
                           f"OUT={out}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("portable,optimized", [(False, False), (True, False), (False, True)])
def test_cpp_program_gives_pythons_outputs(snn_run, portable, optimized, tmp_path):
    model, th, x = exact_runtime_model()
    snn, _ = to_snn(model, th, SNNConfig(timesteps=16, portable=portable))
    onnx.save(runtime.optimize(snn) if optimized else snn, tmp_path / "m.snn.onnx")
    np.save(tmp_path / "x.npy", x)
    lib = "-" if portable else library_path()
    proc = subprocess.run([str(snn_run), str(tmp_path / "m.snn.onnx"), lib, str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "y.npy"), runtime.session(snn).run(None, {"input": x})[0])


def test_cpp_program_reports_a_missing_library(snn_run, tmp_path):
    model, th, x = exact_runtime_model()
    onnx.save(to_snn(model, th, SNNConfig(timesteps=4))[0], tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([str(snn_run), str(tmp_path / "m.onnx"), "-", str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "snn_run: error:" in proc.stderr and "IFNeuron" in proc.stderr
