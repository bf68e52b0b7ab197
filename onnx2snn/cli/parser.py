"""The command line's parser: every subcommand and flag, with their help (argparse only)."""
from __future__ import annotations

import argparse

from .._version import __version__
from ..config import CORRECTIONS, E_MAC_PJ, E_SOP_PJ, METHODS, CalibConfig
from ..errors import UserError


def _int_list(text: str, flag: str):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} {text}: expected positive integers")
    return values


def _data_flags(p: argparse.ArgumentParser, required_note: str):
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH",
                   help="folder of images (class sub-folders give labels, sorted names -> class index), "
                        "a .npy/.npz file, or a folder of them (arrays keyed by input name or one array; "
                        "labels under 'y'). " + required_note)
    g.add_argument("--data-loader", metavar="FILE.py:FN",
                   help="a Python function returning an iterable of feed dicts (one batch each, labels under 'y')")
    g.add_argument("--mean", help="per-channel mean on the [0,1] scale, comma list (images only)")
    g.add_argument("--std", help="per-channel std on the [0,1] scale, comma list (images only)")
    g.add_argument("--size", help="H,W to resize images to (default: the model's input shape)")
    g.add_argument("--layout", choices=["NCHW", "NHWC"], help="image layout (default: from the model's input shape)")
    g.add_argument("--resize", type=int, metavar="PIXELS",
                   help="resize the shorter side of each image to PIXELS, then center-crop to the model's input "
                        "(or --crop); e.g. --resize 256 for ImageNet-style 224 crops")
    g.add_argument("--crop", metavar="H,W", help="center crop after --resize (one number: square)")
    g.add_argument("--annotations", metavar="FILE.json",
                   help="COCO-format boxes; --data is then the image folder it names (detection)")
    g.add_argument("--split", metavar="NAME",
                   help="a Pascal VOC root's ImageSets/Segmentation/NAME.txt (default: every image with a mask)")


def _cluster_flags(p: argparse.ArgumentParser):
    g = p.add_argument_group("scaling out (docs/guide/scaling-out.md; the same results as one process)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="run the batches on a local Dask cluster of N worker processes (the onnx2snn[dask] extra)")
    g.add_argument("--cluster", metavar="ADDRESS",
                   help="run the batches on an existing cluster: a Dask scheduler (tcp://HOST:8786), Ray "
                        "(ray://HOST:10001, or ray:auto: RAY_ADDRESS or a local Ray; the onnx2snn[ray] extra)")


def _output_flags(p: argparse.ArgumentParser, quiet: str, json: str):
    """-v, -q and --json, the same three on every command with the same meaning: `quiet` says what
    -q still prints, `json` what --json holds."""
    g = p.add_argument_group("output (every command)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="log details, onnxruntime's own warnings and, on an error, the traceback")
    g.add_argument("-q", "--quiet", action="store_true", help=f"no progress bars or tables: print only {quiet}")
    g.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help=f"{json} as JSON: written to FILE (atomically), or, with no FILE or '-', printed to stdout "
                        "instead of the text; no progress bars")


class _Parser(argparse.ArgumentParser):
    """argparse with the house rule for user errors: one line on stderr, exit code 1."""

    def error(self, message):
        self.exit(1, f"{self.prog}: error: {message} (see --help)\n")


def _delay(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


MAX_MEMORY_HELP = ("memory the runs may use, e.g. 8G or 512M (default: half of the memory available); batch sizes "
                   "are chosen to fit and printed")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="onnx2snn",
        description="Convert a trained ReLU network (ONNX, any framework) into a spiking network of "
                    "integrate-and-fire neurons that runs in onnxruntime. Training-free: thresholds "
                    "come from calibration data (local threshold balancing).",
        epilog="Run `onnx2snn COMMAND --help` for a command's flags. `onnx2snn MODEL ...` means "
               "`onnx2snn convert MODEL ...`.")
    p.add_argument("--version", action="version", version=f"onnx2snn {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("convert", help="convert an ONNX ANN into an SNN",
                       description="Calibrate thresholds on --data and write the SNN (default MODEL.snn.onnx).")
    c.add_argument("model", help="the trained ANN (.onnx)")
    c.add_argument("-o", "--output", help="output path (default: <model>.snn.onnx); written atomically")
    _data_flags(c, "Required unless --thresholds is given.")
    g = c.add_argument_group("calibration")
    g.add_argument("--method", choices=METHODS, default="ltb",
                   help="ltb: channel-wise local threshold balancing (default); ltb-layer: one threshold "
                        "per layer; max: max-norm; percentile: robust-norm")
    g.add_argument("--percentile", type=float, default=99.9, help="percentile for --method percentile (99.9)")
    g.add_argument("--iters", type=int, default=1000, help="calibration batches (1000); max/percentile stop after one pass")
    g.add_argument("--batch-size", type=int,
                   help="samples per calibration batch (100, fewer if 100 do not fit --max-memory; a model with a "
                        "fixed batch size uses that)")
    g.add_argument("--lr", type=float, default=CalibConfig.lr,
                   help=f"LTB learning rate ({CalibConfig.lr}; the paper uses 1.0, docs/method/defaults.md)")
    g.add_argument("--seed", type=int, default=0, help="shuffling/augmentation seed (0)")
    g.add_argument("--augment", nargs="?", const="crop-flip", metavar="KIND",
                   help="augment calibration batches: crop-flip (the default KIND: random flips and padded crops), "
                        "flip (image and mask: segmentation), ssd (photometric distortion, zoom out and flip: "
                        "detection)")
    g.add_argument("--tune", choices=["none", "auto"], default="none",
                   help="auto: keep threshold snapshots at iters/8, /4, /2 and iters and use the one whose SNN at T is "
                        "closest to the ANN on --delay-samples calibration samples held back from calibration (none)")
    g.add_argument("--round-batches", type=int, default=1, metavar="K",
                   help="LTB: measure K batches at the same thresholds per update (1: sequential LTB); on a "
                        "cluster a round's batches run in parallel; the result depends on K and --seed only")
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip (and count) calibration batches holding NaN or Inf instead of stopping")
    g.add_argument("--thresholds", metavar="FILE", help="reuse thresholds (JSON/NPZ) and skip calibration")
    g.add_argument("--save-thresholds", metavar="FILE", help="save the calibrated thresholds (.json or .npz)")
    s = c.add_argument_group("spiking network")
    s.add_argument("-T", "--timesteps", type=int, default=64, help="simulation steps (64)")
    s.add_argument("--delay", type=_delay, default=None, metavar="D|auto",
                   help="readout averages steps D+1..T; auto: the D in 0..3T/4 that brings the SNN's output "
                        "closest to the ANN's on --delay-samples calibration samples (default: auto with "
                        "--data, else 0)")
    s.add_argument("--delay-samples", type=int, default=200, metavar="N",
                   help="samples used by --delay auto (200)")
    s.add_argument("--correct", choices=list(CORRECTIONS), default=None,
                   help="post-conversion correction at T (Li et al.), layer by layer on --correct-samples calibration "
                        "samples, from the mean difference between the ANN's clipped activation and the SNN's "
                        "average output: potential = a per-neuron initial membrane potential; bias = a per-channel "
                        "input current (measured over the readout window); both = potential, then the delay, then "
                        "bias; stored with the thresholds (default: both with --data; without, the correction "
                        "--thresholds holds for this T, else none)")
    s.add_argument("--correct-samples", type=int, default=200, metavar="N", help="samples for --correct (200)")
    s.add_argument("--v-init", type=float, default=0.5, help="initial membrane potential, fraction of theta (0.5)")
    s.add_argument("--maxpool", choices=["spiking", "move"], default="spiking",
                   help="MaxPool fed by spikes: spiking = pool running sums of currents, converges to the "
                        "ANN's max (default); move = the paper's plain move in front of the neuron (baseline)")
    s.add_argument("--form", choices=["unrolled", "loop"], default="unrolled",
                   help="unrolled: time folded into the batch, fastest, memory grows with T (default); "
                        "loop: an ONNX Loop over steps, memory independent of T")
    s.add_argument("--chunk", type=int, default=1, metavar="K",
                   help="with --form loop: K steps per loop iteration, time-batched (1)")
    s.add_argument("--keep-analog", action="store_true",
                   help="let element-wise non-ReLU ops between spiking layers (Sigmoid, Tanh, HardSwish, GELU, "
                        "SiLU, ...) run on each step's input instead of refusing the model; they do not spike")
    s.add_argument("--freeze-norm", action="store_true",
                   help="InstanceNorm/GroupNorm/LayerNorm between spiking layers become fixed per-channel affines "
                        "from the ANN's statistics on calibration data (needs --data); the error each adds is "
                        "printed and stored in the model's metadata")
    s.add_argument("--freeze-samples", type=int, default=500, metavar="N",
                   help="calibration samples the --freeze-norm statistics are measured on (500)")
    s.add_argument("--loop-op", choices=["loop", "scan"], default="loop",
                   help="with --form loop: an ONNX Loop (default), or a Scan over the iterations for runtimes "
                        "without Loop (tract); no early exit with scan")
    s.add_argument("--portable", action="store_true",
                   help="standard ONNX ops only (no custom op library needed), same outputs")
    s.add_argument("--spikes", default="binary", metavar="binary|burst:K",
                   help="binary: at most one spike per neuron and step (default); burst:K: up to K, each worth θ/K "
                        "(the same range in finer levels; SOPs count every spike of a burst)")
    s.add_argument("--signed", action="store_true",
                   help="signed spikes: a neuron whose net spike count is positive sends a negative spike (-θ) "
                        "when its potential falls below -θ, taking back an early spike (with binary or burst "
                        "spikes; each negative spike costs one SOP per fan-out)")
    s.add_argument("--portable-steps", choices=["written", "scan"], default="written",
                   help="with --portable: each neuron's steps written out one by one (default: onnxruntime, "
                        "OpenVINO and tract run it, fixed or symbolic batch; runs at its own T only), or a Scan "
                        "over the steps (graph size independent of T; not tract)")
    s.add_argument("--nir", metavar="FILE.nir",
                   help="also write the SNN as a NIR graph (as export-nir; checked before calibration)")
    s.add_argument("--early-exit", action="store_true",
                   help="with --form loop: stop when the top-1 is stable; adds output onnx2snn_steps")
    s.add_argument("--exit-stable", type=int, default=32, metavar="S",
                   help="early exit: top-1 unchanged for S steps (32)")
    s.add_argument("--exit-margin", type=float, default=2.0, metavar="M",
                   help="early exit: and top-1 minus runner-up of the scores above M, in output units (2.0)")
    s.add_argument("--exit-min-steps", type=int, default=16, help="early exit: never before this many steps (16)")
    s.add_argument("--check", type=int, default=64, metavar="N",
                   help="after converting, compare SNN and ANN on N calibration samples at T/4, T/2, T (64; 0 = skip)")
    s.add_argument("--report", metavar="FILE.json",
                   help="the check's full report: per layer (firing rate, silent/saturated neurons, rate error), "
                        "per T, SOP90/SOP95, frames per joule")
    s.add_argument("--plot", metavar="DIR", help="the check's plots as PNG files in DIR (needs matplotlib)")
    c.add_argument("--max-memory", metavar="SIZE", help=MAX_MEMORY_HELP)
    _output_flags(c, "the SNN's path", "the conversion (output, settings, layers and thresholds, corrections, "
                  "delay, batch sizes, the check)")
    _cluster_flags(c)

    e = sub.add_parser("eval", help="accuracy/agreement of an SNN at several T",
                       description="Simulate once up to the largest T and report each listed T.")
    e.add_argument("snn", help="a model written by onnx2snn")
    _data_flags(e, "Defaults for preprocessing come from the SNN's metadata.")
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
    e.add_argument("--max-memory", metavar="SIZE", help=MAX_MEMORY_HELP)
    e.add_argument("--report", metavar="FILE.json",
                   help="full report: per layer (firing rate, silent/saturated neurons, rate error vs the ANN's "
                        "clipped activation), per T (accuracy, agreement, SOPs, energy), SOP90/SOP95, frames per joule")
    e.add_argument("--plot", metavar="DIR",
                   help="PNG plots in DIR: accuracy vs T, firing rates, rate errors, thresholds (needs matplotlib)")
    e.add_argument("--e-sop", type=float, default=E_SOP_PJ, help="pJ per synaptic operation (0.077)")
    e.add_argument("--e-mac", type=float, default=E_MAC_PJ, help="pJ per MAC (12.5)")
    _output_flags(e, "the results table", "the results (samples, task, the ANN's and each T's figures)")
    _cluster_flags(e)

    r = sub.add_parser("run", help="run an SNN on data and save its outputs",
                       description="Outputs go to .npy (one output) or .npz keyed by output name.")
    r.add_argument("snn")
    _data_flags(r, "")
    r.add_argument("-o", "--output", default="outputs.npz", help="output file (.npy or .npz)")
    r.add_argument("--batch-size", type=int, help="samples per run (default: sized from the model, see eval)")
    r.add_argument("--max-memory", metavar="SIZE", help=MAX_MEMORY_HELP)
    r.add_argument("--limit", type=int)
    r.add_argument("--runtime", choices=["onnxruntime", "openvino", "tract"], default="onnxruntime",
                   help="the runtime to run on (openvino and tract run --portable models; from the "
                        "onnx2snn[runtimes] extra)")
    _output_flags(r, "the outputs file's path", "what was written (file, outputs and their shapes)")
    _cluster_flags(r)

    i = sub.add_parser("inspect", help="say what conversion will do, without data or calibration",
                       description="Activations, max pools, regions, blocking nodes with reasons and the inputs' "
                                   "preprocessing. Exit code 0 when the model converts, 1 when it does not.")
    i.add_argument("model", help="the trained ANN (.onnx)")
    i.add_argument("--keep-analog", action="store_true", help="as for convert: judge with --keep-analog")
    i.add_argument("--freeze-norm", action="store_true", help="as for convert: judge with --freeze-norm")
    i.add_argument("--nir", action="store_true",
                   help="also say whether the SNN will export to NIR (export-nir), what stays on the host and "
                        "what NIR cannot express (exit code 1 when it cannot)")
    _output_flags(i, "nothing (the exit code says whether the model converts)", "the inspection")

    x = sub.add_parser("export-nir", help="write a converted SNN as a NIR graph (neuromorphic toolchains)",
                       description="The SNN (unrolled form, without --portable) from its input to the readout as "
                                   "a NIR file; what runs on the host is written beside it as small ONNX files "
                                   "(docs/guide/nir.md).")
    x.add_argument("snn", help="an SNN written by onnx2snn (.onnx)")
    x.add_argument("-o", "--output", help="the NIR file (default: the SNN's name with .nir)")
    x.add_argument("--target", choices=["speck"],
                   help="also quantise and check against a chip's limits (speck: SynSense Speck / DYNAP-CNN, "
                        "8-bit weights; needs sinabs for the memory check); exit code 1 when it does not fit")
    _output_flags(x, "the NIR file's path", "the export (files written, nodes, T and D, input coding, host parts)")

    n = sub.add_parser("run-nir", help="run an exported NIR graph (NumPy reference simulation) on data",
                       description="Same data options and output format as `run`; the host parts beside the .nir "
                                   "run first (and the head after the readout last).")
    n.add_argument("nir", help="a .nir file written by export-nir")
    _data_flags(n, "")
    n.add_argument("-o", "--output", default="outputs.npz", help="output file (.npy or .npz)")
    n.add_argument("-T", "--timesteps", type=int, help="steps to run (default: the graph's metadata)")
    n.add_argument("-D", "--delay", type=int, help="readout from step D+1 (default: the graph's metadata)")
    n.add_argument("--batch-size", type=int, help="samples per run (32)")
    n.add_argument("--limit", type=int)
    _output_flags(n, "the outputs file's path", "what was written (file, outputs and their shapes)")

    d = sub.add_parser("demo", help="convert the bundled digits CNN on bundled data and evaluate it",
                       description="No downloads: a small CNN trained on scikit-learn's digits ships with the package.")
    d.add_argument("-o", "--output", default="digits_cnn.snn.onnx", help="where to write the demo SNN")
    d.add_argument("--iters", type=int, default=100)
    _output_flags(d, "the results table", "the evaluation of the demo SNN on the held-out digits")
    return p
