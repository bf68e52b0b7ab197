"""`onnx2snn demo`: convert the bundled digits CNN on bundled data and evaluate it (no downloads).

The model and data were made by tools/make_demo.py (a CNN trained on scikit-learn's digits).
"""
from __future__ import annotations

from pathlib import Path

from .. import api
from ..config import CalibConfig, SNNConfig
from ..evaluate.report import eval_table, layers_table

HERE = Path(__file__).resolve().parent.parent / "demo_data"      # onnx2snn/demo_data
MODEL = HERE / "digits_cnn.onnx"
CALIB = HERE / "digits_calib.npz"
TEST = HERE / "digits_test.npz"


def run(output, iters: int = 100, timesteps=(8, 16, 32, 64), progress: bool = False) -> tuple:
    """(Conversion, EvalResult): the demo CNN converted to `output` and evaluated on the held-out digits."""
    result = api.convert(MODEL, data=str(CALIB), output=output,
                         calib=CalibConfig(iters=iters, batch_size=100),
                         snn=SNNConfig(timesteps=max(timesteps)), progress=progress)
    ev = api.evaluate_file(result.output, data=str(TEST), ann_path=MODEL, timesteps=timesteps,
                           batch_size=64, progress=progress)
    return result, ev


def describe(result, ev, quiet: bool = False) -> str:
    """The demo's results for people (`quiet`: the evaluation table only)."""
    if quiet:
        return eval_table(ev)
    return "\n".join([
        f"demo: {MODEL.name} (CNN trained on scikit-learn digits) -> {result.output}",
        f"calibrated {len(result.layers)} spiking layers with {result.thresholds.method}, "
        f"{result.thresholds.info.get('iters')} batches of 100 in {result.calibration_seconds:.1f}s",
        layers_table(result.layers), "",
        f"held-out digits ({TEST.name}):", eval_table(ev)])
