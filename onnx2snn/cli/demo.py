"""`onnx2snn demo`: convert the bundled digits CNN on bundled data and evaluate it (no downloads).

The model and data were made by tools/make_demo.py (`python -m tools.make_demo`; a CNN trained on scikit-learn's digits); they
ship in onnx2snn/demo_data.
"""
from __future__ import annotations

from pathlib import Path

from ..config import CalibConfig, SNNConfig
from .options import output_flags
from .output import check_json, emit, progress

HERE = Path(__file__).resolve().parent.parent / "demo_data"      # onnx2snn/demo_data
MODEL = HERE / "digits_cnn.onnx"
CALIB = HERE / "digits_calib.npz"
TEST = HERE / "digits_test.npz"
ITERS = 100          # calibration batches of the demo (a small CNN: 100 suffice)
OUTPUT = "digits_cnn.snn.onnx"     # where `onnx2snn demo` writes the SNN unless -o says otherwise


def run(output, iters: int = ITERS, timesteps=(8, 16, 32, 64), progress: bool = False) -> tuple:
    """(Conversion, EvalResult): the demo CNN converted to `output` and evaluated on the held-out digits."""
    from .. import api          # here, so that the command line's parser stays cheap to import
    result = api.convert(MODEL, data=str(CALIB), output=output,
                         calib=CalibConfig(iters=iters, batch_size=100),
                         snn=SNNConfig(timesteps=max(timesteps)), progress=progress)
    ev = api.evaluate_file(result.output, data=str(TEST), ann_path=MODEL, timesteps=timesteps,
                           batch_size=64, progress=progress)
    return result, ev


def describe(result, ev, quiet: bool = False) -> str:
    """The demo's results for people (`quiet`: the evaluation table only)."""
    from ..evaluate.report import eval_table, layers_table
    if quiet:
        return eval_table(ev)
    return "\n".join([
        f"demo: {MODEL.name} (CNN trained on scikit-learn digits) -> {result.output}",
        f"calibrated {len(result.layers)} spiking layers with {result.thresholds.method}, "
        f"{result.thresholds.info.get('iters')} batches of 100 in {result.calibration_seconds:.1f}s",
        layers_table(result.layers), "",
        f"held-out digits ({TEST.name}):", eval_table(ev)])


NAME = "demo"


def add(sub) -> None:
    d = sub.add_parser("demo", help="convert the bundled digits CNN on bundled data and evaluate it",
                       description="No downloads: a small CNN trained on scikit-learn's digits ships with the package.")
    d.add_argument("-o", "--output", default=OUTPUT, help=f"where to write the demo SNN ({OUTPUT})")
    d.add_argument("--iters", type=int, default=ITERS, help=f"calibration batches ({ITERS})")
    output_flags(d, "the results table", "the evaluation of the demo SNN on the held-out digits")


def command(args) -> int:
    check_json(args, [(MODEL, "the demo model")], [(args.output, "-o")])
    result, evaluation = run(args.output, iters=args.iters, progress=progress(args))
    emit(args, {"conversion": result.to_json(), "eval": evaluation.to_json()},
          describe(result, evaluation, quiet=args.quiet))
    return 0
