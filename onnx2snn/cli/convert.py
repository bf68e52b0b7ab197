"""`onnx2snn convert MODEL --data DIR` (also `onnx2snn MODEL ...`): its flags and what it does."""
from __future__ import annotations

import argparse
import functools

from ..config import (CHECK_SAMPLES, CORRECT_SAMPLES, CORRECTIONS, DELAY_SAMPLES, FORMS, FREEZE_SAMPLES, LOOP_OPS,
                      MAXPOOLS, METHODS, PORTABLE_STEPS, CalibConfig, SNNConfig)
from .options import cluster_flags, data_flags, default_of, flag_of, memory_flag, output_flags, preprocess
from .output import check_json, data_inputs, emit, progress, quiet, say

NAME = "convert"
_C = functools.partial(default_of, CalibConfig)
_S = functools.partial(default_of, SNNConfig)


def _delay(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def add(sub) -> None:
    c = sub.add_parser("convert", help="convert an ONNX ANN into an SNN",
                       description="Calibrate thresholds on --data and write the SNN (default MODEL.snn.onnx).")
    c.add_argument("model", help="the trained ANN (.onnx)")
    c.add_argument("-o", "--output", help="output path (default: <model>.snn.onnx); written atomically")
    data_flags(c, "Required unless --thresholds is given.")
    _calibration_flags(c)
    _exit_and_check_flags(_network_flags(c))
    memory_flag(c)
    output_flags(c, "the SNN's path", "the conversion (output, settings, layers and thresholds, corrections, "
                  "delay, batch sizes, the check)")
    cluster_flags(c)


def _calibration_flags(c) -> None:
    g = c.add_argument_group("calibration")
    g.add_argument("--method", choices=METHODS, default=_C("method"),
                   help="ltb: channel-wise local threshold balancing (default); ltb-layer: one threshold "
                        "per layer; max: max-norm; percentile: robust-norm")
    g.add_argument("--percentile", type=float, default=_C("percentile"),
                   help=f"percentile for --method percentile ({_C('percentile')})")
    g.add_argument("--iters", type=int, default=_C("iters"),
                   help=f"calibration batches ({_C('iters')}); max/percentile stop after one pass")
    g.add_argument("--batch-size", type=int,
                   help="samples per calibration batch (100, fewer if 100 do not fit --max-memory; a model with a "
                        "fixed batch size uses that)")
    g.add_argument("--lr", type=float, default=_C("lr"),
                   help=f"LTB learning rate ({_C('lr')}; the paper uses 1.0, docs/method/defaults.md)")
    g.add_argument("--seed", type=int, default=_C("seed"), help=f"shuffling/augmentation seed ({_C('seed')})")
    g.add_argument("--augment", nargs="?", const="crop-flip", default=_C("augment"), metavar="KIND",
                   help="augment calibration batches: crop-flip (the default KIND: random flips and padded crops), "
                        "flip (image and mask: segmentation), ssd (photometric distortion, zoom out and flip: "
                        "detection)")
    g.add_argument("--tune", choices=["none", "auto"], default=_C("tune"),
                   help="auto: keep threshold snapshots at iters/8, /4, /2 and iters and use the one whose SNN at T is "
                        "closest to the ANN on --delay-samples calibration samples held back from calibration (none)")
    g.add_argument("--round-batches", type=int, default=_C("round_batches"), metavar="K",
                   help="LTB: measure K batches at the same thresholds per update (1: sequential LTB); on a "
                        "cluster a round's batches run in parallel; the result depends on K and --seed only")
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip (and count) calibration batches holding NaN or Inf instead of stopping")
    g.add_argument("--thresholds", metavar="FILE", help="reuse thresholds (JSON/NPZ) and skip calibration")
    g.add_argument("--save-thresholds", metavar="FILE", help="save the calibrated thresholds (.json or .npz)")


def _network_flags(c):
    """The spiking network's flags (the group is returned: the early exit and the check join it)."""
    s = c.add_argument_group("spiking network")
    s.add_argument("-T", "--timesteps", type=int, default=_S("timesteps"), help=f"simulation steps ({_S('timesteps')})")
    s.add_argument("--delay", type=_delay, default=None, metavar="D|auto",
                   help="readout averages steps D+1..T; auto: the D in 0..3T/4 that brings the SNN's output "
                        "closest to the ANN's on --delay-samples calibration samples (default: auto with "
                        "--data, else 0)")
    s.add_argument("--delay-samples", type=int, default=DELAY_SAMPLES, metavar="N",
                   help=f"samples used by --delay auto ({DELAY_SAMPLES})")
    s.add_argument("--correct", choices=list(CORRECTIONS), default=None,
                   help="post-conversion correction at T (Li et al.), layer by layer on --correct-samples calibration "
                        "samples, from the mean difference between the ANN's clipped activation and the SNN's "
                        "average output: potential = a per-neuron initial membrane potential; bias = a per-channel "
                        "input current (measured over the readout window); both = potential, then the delay, then "
                        "bias; stored with the thresholds (default: both with --data; without, the correction "
                        "--thresholds holds for this T, else none)")
    s.add_argument("--correct-samples", type=int, default=CORRECT_SAMPLES, metavar="N",
                   help=f"samples for --correct ({CORRECT_SAMPLES})")
    s.add_argument("--v-init", type=float, default=_S("v_init"),
                   help=f"initial membrane potential, fraction of theta ({_S('v_init')})")
    s.add_argument("--maxpool", choices=list(MAXPOOLS), default=_S("maxpool"),
                   help="MaxPool fed by spikes: spiking = pool running sums of currents, converges to the "
                        "ANN's max (default); move = the paper's plain move in front of the neuron (baseline)")
    s.add_argument("--form", choices=list(FORMS), default=_S("form"),
                   help="unrolled: time folded into the batch, fastest, memory grows with T (default); "
                        "loop: an ONNX Loop over steps, memory independent of T")
    s.add_argument("--chunk", type=int, default=_S("chunk"), metavar="K",
                   help=f"with --form loop: K steps per loop iteration, time-batched ({_S('chunk')})")
    s.add_argument("--keep-analog", action="store_true",
                   help="let element-wise non-ReLU ops between spiking layers (Sigmoid, Tanh, HardSwish, GELU, "
                        "SiLU, ...) run on each step's input instead of refusing the model; they do not spike")
    s.add_argument("--freeze-norm", action="store_true",
                   help="InstanceNorm/GroupNorm/LayerNorm between spiking layers become fixed per-channel affines "
                        "from the ANN's statistics on calibration data (needs --data); the error each adds is "
                        "printed and stored in the model's metadata")
    s.add_argument("--freeze-samples", type=int, default=FREEZE_SAMPLES, metavar="N",
                   help=f"calibration samples the --freeze-norm statistics are measured on ({FREEZE_SAMPLES})")
    s.add_argument("--loop-op", choices=list(LOOP_OPS), default=_S("loop_op"),
                   help="with --form loop: an ONNX Loop (default), or a Scan over the iterations for runtimes "
                        "without Loop (tract); no early exit with scan")
    s.add_argument("--portable", action="store_true",
                   help="standard ONNX ops only (no custom op library needed), same outputs")
    s.add_argument("--spikes", default=_S("spikes"), metavar="binary|burst:K",
                   help="binary: at most one spike per neuron and step (default); burst:K: up to K, each worth θ/K "
                        "(the same range in finer levels; SOPs count every spike of a burst)")
    s.add_argument("--signed", action="store_true",
                   help="signed spikes: a neuron whose net spike count is positive sends a negative spike (-θ) "
                        "when its potential falls below -θ, taking back an early spike (with binary or burst "
                        "spikes; each negative spike costs one SOP per fan-out)")
    s.add_argument("--portable-steps", choices=list(PORTABLE_STEPS), default=_S("portable_steps"),
                   help="with --portable: each neuron's steps written out one by one (default: onnxruntime, "
                        "OpenVINO and tract run it, fixed or symbolic batch; runs at its own T only), or a Scan "
                        "over the steps (graph size independent of T; not tract)")
    s.add_argument("--nir", metavar="FILE.nir",
                   help="also write the SNN as a NIR graph (as export-nir; checked before calibration)")
    return s


def _exit_and_check_flags(s) -> None:
    s.add_argument("--early-exit", action="store_true",
                   help="with --form loop: stop when the top-1 is stable; adds output onnx2snn_steps")
    s.add_argument("--exit-stable", type=int, default=_S("exit_stable"), metavar="S",
                   help=f"early exit: top-1 unchanged for S steps ({_S('exit_stable')})")
    s.add_argument("--exit-margin", type=float, default=_S("exit_margin"), metavar="M",
                   help="early exit: and top-1 minus runner-up of the scores above M, in output units "
                        f"({_S('exit_margin')})")
    s.add_argument("--exit-min-steps", type=int, default=_S("exit_min_steps"),
                   help=f"early exit: never before this many steps ({_S('exit_min_steps')})")
    s.add_argument("--check", type=int, default=CHECK_SAMPLES, metavar="N",
                   help=f"after converting, compare SNN and ANN on N calibration samples at T/4, T/2, T "
                        f"({CHECK_SAMPLES}; 0 = skip)")
    s.add_argument("--report", metavar="FILE.json",
                   help="the check's full report: per layer (firing rate, silent/saturated neurons, rate error), "
                        "per T, SOP90/SOP95, frames per joule")
    s.add_argument("--plot", metavar="DIR", help="the check's plots as PNG files in DIR (needs matplotlib)")


def configs(args) -> tuple:
    """(CalibConfig, SNNConfig) of parsed `convert` arguments, data-dependent defaults resolved."""
    from .. import api
    calib = CalibConfig(method=args.method, iters=args.iters, batch_size=args.batch_size, lr=args.lr,
                        percentile=args.percentile, seed=args.seed, augment=args.augment,
                        skip_nonfinite=args.skip_nonfinite, tune=args.tune, round_batches=args.round_batches)
    auto = api.data_defaults(bool(args.data or args.data_loader), args.thresholds, args.timesteps)
    snn = SNNConfig(timesteps=args.timesteps, delay=auto["delay"] if args.delay is None else args.delay,
                    v_init=args.v_init, maxpool=args.maxpool, form=args.form, chunk=args.chunk,
                    portable=args.portable, portable_steps=args.portable_steps, early_exit=args.early_exit,
                    exit_stable=args.exit_stable,
                    exit_margin=args.exit_margin, exit_min_steps=args.exit_min_steps,
                    keep_analog=args.keep_analog, loop_op=args.loop_op, correct=args.correct or auto["correct"],
                    spikes=args.spikes, signed=args.signed)
    return calib, snn


def command(args) -> int:
    from .. import api
    from ..evaluate.report import eval_table, layers_table, report_lines
    from ..snn.info import SNNInfo
    calib, snn = configs(args)
    check_json(args, [(args.model, "the model"), (args.thresholds, "--thresholds")] + data_inputs(args),
                [(args.output or api.default_output(args.model), "-o"), (args.save_thresholds, "--save-thresholds"),
                 (args.report, "--report"), (args.nir, "--nir")])
    result = api.convert(
        args.model, data=args.data, data_loader=args.data_loader, output=args.output, calib=calib, snn=snn,
        prep=preprocess(args), thresholds=args.thresholds, save_thresholds=args.save_thresholds,
        check_samples=args.check if (args.data or args.data_loader) else 0, progress=progress(args),
        delay_samples=args.delay_samples, report_path=args.report, plot_dir=args.plot,
        correct_samples=args.correct_samples, max_memory=args.max_memory, freeze_norm=args.freeze_norm,
        freeze_samples=args.freeze_samples, annotations=args.annotations, split=args.split,
        nir=args.nir, workers=args.workers, cluster=args.cluster, say=say(args))
    emit(args, result.to_json())
    if not quiet(args):
        th = result.thresholds
        how = (f"{th.info.get('iters')} batches in {result.calibration_seconds:.1f}s" if args.thresholds is None
               else f"thresholds from {args.thresholds}")
        form = args.form + (f", chunk {args.chunk}" if args.form == "loop" else "") + \
            (", portable" if args.portable else "") + (", early exit" if args.early_exit else "") + \
            (f", {args.spikes} spikes" if args.spikes != "binary" else "") + (", signed" if args.signed else "")
        print(f"converted {args.model} -> {result.output}  ({form}, T={args.timesteps}, "
              f"method {th.method}, {how})")
        print(f"memory budget {result.memory.describe(flag_of)}; samples per batch: "
              + ", ".join(f"{k} {v}" for k, v in result.batches.items()))
        print("steps (seconds): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
        if result.frozen is not None and result.frozen.layers:
            f = result.frozen
            print(f"froze {len(f.layers)} normalisation layer(s) on {f.samples} samples (--freeze-norm); relative "
                  "error each adds: " + ", ".join(f"{d['name']} {d['rel_error']:.4f}" for d in f.layers)
                  + (f"; the frozen ANN's output vs the ANN's: {f.output_rel_error:.4f}"
                     if f.output_rel_error is not None else ""))
        tune = result.thresholds.info.get("tune")
        if tune:
            print(f"calibration length chosen for T={args.timesteps}: {tune['iters']} batches "
                  f"(relative output error by batches: {tune['rel_error']})")
        fix = result.thresholds.info.get("correction")
        if fix:
            took = result.step_seconds.get("correction")
            print(f"{fix['kind']} correction at T={fix['timesteps']} on {fix['samples']} samples"
                  + (f" in {took:.1f}s" if took else " (from --thresholds)") + " (mean |ANN - SNN| before each step: "
                  + ", ".join(f"{s['kind']} {s['mean_abs_difference']:.4f}" for s in fix["steps"]) + ")"
                  + ("" if result.delay is not None else f"; readout delay D={snn.delay}"))
        if result.delay is not None:
            c = result.delay
            print(f"delay D={c.delay} chosen on {c.samples} samples: relative output error vs the ANN "
                  f"{c.rel_error.get(c.delay, 0):.4f} (D=0: {c.rel_error.get(0, 0):.4f})")
        print(layers_table(result.layers))
        info = SNNInfo.from_metadata(result.snn)
        if info.analog:
            print(f"kept analog (--keep-analog: on each step's input, not compensated): {', '.join(info.analog)}")
        if info.compensated:
            print(f"expectation compensation (on the running means of their inputs, every step): "
                  f"{len(info.compensated)} node(s): {', '.join(info.compensated)}")
        if result.check is not None:
            print("\ncheck on calibration samples (SNN vs ANN):")
            print(eval_table(result.check))
        if result.report is not None:
            print(report_lines(result.report))
        if args.nir:
            print(f"NIR graph: {args.nir} (host parts beside it, if any; see export-nir)")
    elif args.json != "-":
        print(result.output)
    return 0


