"""Accuracy of whole conversions (recipes of `onnx2snn convert` flags) at several T, on held-out images.

    python tools/bench_recipes.py --model ../shared/bench/models/resnet32_cifar10.onnx \\
        --calib ../shared/bench/cifar10/calib --val ../shared/bench/cifar10/val \\
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --timesteps 16,32 \\
        --recipe "" --recipe "--correct none" --recipe "--lr 1 --delay 0 --correct none"

Each recipe is the flags a user would add to `onnx2snn MODEL --data CALIB -T T` ("" = the defaults),
parsed by the command line's own parser, and run through `api.convert` exactly as the command runs
it: every choice (calibration length, delay, correction) is made on calibration samples only; the
validation images are used for the reported accuracy alone. Calibrations that do not depend on T
(no `--tune auto`) are shared between the T of a recipe and between recipes with equal calibration
settings. Prints one line per (recipe, T): top-1, agreement with the ANN, relative output error,
the chosen delay, the synaptic operations per image (every spike of a burst counted), and the
seconds spent on calibration, correction and delay choice. Neuron variants are recipes too:
`--recipe "--spikes burst:2"`, `--recipe "--signed"`, `--recipe "--signed --spikes burst:2"`.
"""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from benchcommon import parser

from onnx2snn import api, cli
from onnx2snn.data import batches as Bt
from onnx2snn import data as D
from onnx2snn.graph import onnx_io as M
from onnx2snn.evaluate.evaluation import evaluate


def main():
    p = parser(__doc__)
    p.add_argument("--calib", required=True)
    p.add_argument("--timesteps", default="16,32")
    p.add_argument("--recipe", action="append", help="flags for `onnx2snn convert` (repeatable; '' = defaults)")
    p.add_argument("--limit", type=int, help="validation images (default: all)")
    p.add_argument("--eval-batch", type=int, default=50)
    p.add_argument("--json", help="append the rows to this JSON-lines file")
    args = p.parse_args()
    ann = M.load(args.model)
    prep = D.Preprocess(args.mean, args.std)
    val = D.open_data(args.val, None, D.model_inputs(ann), prep)
    calib_src = D.open_data(args.calib, None, D.model_inputs(ann), prep)
    shared = {}          # CalibConfig -> (Thresholds, seconds)
    for recipe in args.recipe or [""]:
        for t in (int(x) for x in args.timesteps.split(",")):
            flags = ["convert", args.model, "--data", args.calib, "-T", str(t)] + shlex.split(recipe)
            cargs = cli.build_parser().parse_args(flags)
            calib, snn = cli.configs(cargs)
            start = time.perf_counter()
            th, cal_s = shared.get(calib, (None, None))
            if th is None:
                th_run = None if calib.tune == "auto" else api.calibrate(ann, calib_src, calib)
                cal_s = time.perf_counter() - start
                if th_run is not None:
                    shared[calib] = th, cal_s = th_run, cal_s
            start = time.perf_counter()
            res = api.convert(args.model, data=args.calib, calib=calib, snn=snn, prep=prep, thresholds=th,
                              write=False, delay_samples=cargs.delay_samples,
                              correct_samples=cargs.correct_samples)
            # the whole conversion (analysis, calibration, corrections, delay, rewrite); a calibration
            # shared between the T of a recipe counts in each T's figure
            whole_s = time.perf_counter() - start + (cal_s if th is not None else 0.0)
            if th is None:
                cal_s = res.calibration_seconds
            ev = evaluate(res.snn, Bt.eval_batches(val, args.eval_batch, args.limit), [t], ann)
            r = ev.rows[0]
            row = {"model": Path(args.model).name, "recipe": recipe or "(defaults)", "T": t,
                   "accuracy": r["accuracy"], "ann_accuracy": ev.ann_accuracy, "agreement": r["agreement"],
                   "rel_error": r["rel_error"], "sops": r["sops"], "spikes": snn.neuron,
                   "delay": res.delay.delay if res.delay else snn.delay,
                   "tune_iters": (res.thresholds.info.get("tune") or {}).get("iters"),
                   # the label-free score the defaults are chosen by: relative output error on the
                   # calibration samples --delay auto scored (None with a fixed delay)
                   "calib_rel_error": res.delay.rel_error.get(res.delay.delay) if res.delay else None,
                   "calibration_s": round(cal_s, 1), "conversion_s": round(whole_s, 1),
                   **{f"{k}_s": round(v, 1) for k, v in res.step_seconds.items()}, "samples": ev.samples}
            print(f"[{row['recipe']}] T={t}: top-1 {100 * r['accuracy']:.1f}% (ANN {100 * ev.ann_accuracy:.1f}%), "
                  f"agreement {100 * r['agreement']:.1f}%, rel.error {r['rel_error']:.3f}, D={row['delay']}, "
                  f"SOPs/image {r['sops'] / 1e6:.2f}M"
                  + (f", tuned to {row['tune_iters']} batches" if row["tune_iters"] else "")
                  + (f", rel.error on calibration samples {row['calib_rel_error']:.3f}" if row["calib_rel_error"] else "")
                  + f"; seconds: calibration {row['calibration_s']}"
                  + "".join(f", {k} {v:.0f}" for k, v in res.step_seconds.items())
                  + f"; whole conversion {whole_s:.0f} s = {whole_s / cal_s:.2f}x the calibration", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
