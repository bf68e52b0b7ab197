"""`onnx2snn inspect`: its flags and what it does."""
from __future__ import annotations

from .options import output_flags
from .output import check_json, emit

NAME = "inspect"


def add(sub) -> None:
    i = sub.add_parser("inspect", help="say what conversion will do, without data or calibration",
                       description="Activations, max pools, regions, blocking nodes with reasons and the inputs' "
                                   "preprocessing. Exit code 0 when the model converts, 1 when it does not.")
    i.add_argument("model", help="the trained ANN (.onnx)")
    i.add_argument("--keep-analog", action="store_true", help="as for convert: judge with --keep-analog")
    i.add_argument("--freeze-norm", action="store_true", help="as for convert: judge with --freeze-norm")
    i.add_argument("--nir", action="store_true",
                   help="also say whether the SNN will export to NIR (export-nir), what stays on the host and "
                        "what NIR cannot express (exit code 1 when it cannot)")
    output_flags(i, "nothing (the exit code says whether the model converts)", "the inspection")


def command(args) -> int:
    from ..evaluate.inspection import inspect_model
    from ..evaluate.report import inspection_text
    check_json(args, [(args.model, "the model")])
    report = inspect_model(args.model, keep_analog=args.keep_analog, freeze_norm=args.freeze_norm, nir=args.nir)
    emit(args, report, None if args.quiet else inspection_text(report))
    return 0 if report["convertible"] and (not args.nir or report["nir"]["exportable"]) else 1
