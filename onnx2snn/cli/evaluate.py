"""`onnx2snn eval`: its flags and what it does."""
from __future__ import annotations

from ..config import E_MAC_PJ, E_SOP_PJ, check_energy
from ..errors import UserError
from .options import cluster_flags, flag_of, data_flags, int_list, memory_flag, output_flags, preprocess
from .output import emit, progress, say

NAME = "eval"


def add(sub) -> None:
    e = sub.add_parser("eval", help="accuracy/agreement of an SNN at several T",
                       description="Simulate once up to the largest T and report each listed T.")
    e.add_argument("snn", help="a model written by onnx2snn")
    data_flags(e, "Defaults for preprocessing come from the SNN's metadata.")
    e.add_argument("--ann", help="the original ANN, for agreement and relative output error")
    e.add_argument("--timesteps", "-T",
                   help="comma list of T (default: the model's T/4, T/2 and T, those above its readout delay)")
    e.add_argument("--task", choices=["classify", "segment", "detect", "regress"],
                   help="what to score (default: inferred from the data: class ids -> top-1/top-5, masks -> mIoU, "
                        "--annotations -> COCO mAP, float targets -> MSE/PSNR; printed)")
    e.add_argument("--decode", metavar="FILE.py:FN",
                   help="detection: FN(outputs, meta) turns the outputs of a batch into (boxes xyxy in original "
                        "pixels, scores, category ids) per image (for models exported up to their heads)")
    e.add_argument("--delay", metavar="D|auto",
                   help="readout delay at every T (default: the model's D scaled in proportion to each T; auto: "
                        "per T, the D whose output is closest to the --ann's on this data)")
    e.add_argument("--limit", type=int, help="evaluate at most N samples (a fixed random subset)")
    e.add_argument("--batch-size", type=int,
                   help="samples per simulation batch; memory grows with T x batch (default: the most that fit "
                        "--max-memory, at most 64)")
    memory_flag(e)
    e.add_argument("--report", metavar="FILE.json",
                   help="full report: per layer (firing rate, silent/saturated neurons, rate error vs the ANN's "
                        "clipped activation), per T (accuracy, agreement, SOPs, energy), SOP90/SOP95, frames per joule")
    e.add_argument("--plot", metavar="DIR",
                   help="PNG plots in DIR: accuracy vs T, firing rates, rate errors, thresholds (needs matplotlib)")
    e.add_argument("--e-sop", type=float, default=E_SOP_PJ, help="pJ per synaptic operation (0.077)")
    e.add_argument("--e-mac", type=float, default=E_MAC_PJ, help="pJ per MAC (12.5)")
    output_flags(e, "the results table", "the results (samples, task, the ANN's and each T's figures)")
    cluster_flags(e)


def _delay_flag(value):
    if value is None or value == "auto":
        return value
    try:
        d = int(value)
    except ValueError:
        raise UserError(f"--delay {value}: expected an integer >= 0 or auto") from None
    if d < 0:
        raise UserError(f"--delay {value}: expected an integer >= 0 or auto")
    return d


def command(args) -> int:
    from .. import api
    from ..evaluate.report import delay_line, eval_table, report_lines
    from ..snn.info import SNNInfo
    check_energy(args.e_sop, args.e_mac)
    snn = api.load_snn(args.snn)
    prep = preprocess(args, api.recorded_preprocess(snn))
    result = api.evaluate_file(args.snn, args.data, args.data_loader, args.ann,
                               int_list(args.timesteps, "--timesteps") if args.timesteps else None,
                               args.batch_size, args.limit, prep, progress=progress(args),
                               json_path=None if args.json == "-" else args.json,
                               report_path=args.report, plot_dir=args.plot, e_sop=args.e_sop, e_mac=args.e_mac,
                               max_memory=args.max_memory, task=args.task, annotations=args.annotations,
                               decode=args.decode, split=args.split, delay=_delay_flag(args.delay),
                               workers=args.workers, cluster=args.cluster,
                               say=say(args))
    if args.json == "-":
        emit(args, result.to_json())
        return 0
    if not args.quiet:
        print(delay_line(result, SNNInfo.from_metadata(snn)))
        if result.task:
            print(f"task: {result.task} ({result.task_reason})")
        over = result.sample_bytes and not result.memory.fits(result.sample_bytes)
        print(f"memory budget {result.memory.describe(flag_of)}: {result.batch_size} samples per simulation batch"
              + (" (--batch-size)" if args.batch_size else "")
              + (f"; one sample does not fit at T={max(r['T'] for r in result.rows)}: the unrolled simulation "
                 f"runs {result.slice_steps} steps at a time" if result.slice_steps else "")
              + (f"; one sample is estimated at {result.sample_bytes / 2 ** 30:.1f} GiB, above the budget (a model "
                 "converted with --form loop needs memory independent of T)" if over else ""))
    print(eval_table(result, args.e_sop, args.e_mac))
    if result.report is not None:
        print(report_lines(result.report))
    return 0
