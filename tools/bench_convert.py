"""Benchmark conversion on real models: accuracy vs T per method, calibration cost, SNN speed.

    python tools/bench_convert.py --model ../shared/bench/models/resnet32_cifar10.onnx \\
        --calib ../shared/bench/cifar10/calib --val ../shared/bench/cifar10/val \\
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --methods ltb,percentile [--delays 0,auto]

Every ratio is measured in this one run on this machine. Calibration is timed on batches held in
memory (decoding excluded) against the ANN's plain inference over the same batches; peak memory
of calibration is the max RSS of a child process that only calibrates.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import numpy as np
from benchcommon import best_seconds, parser

import onnx2snn
from onnx2snn import api, runtime
from onnx2snn.data import batches as Bt
from onnx2snn import data as D
from onnx2snn.graph import onnx_io as M
from onnx2snn.calibration.balancing import batches_needed, calibrate
from onnx2snn.config import CalibConfig, SNNConfig
from onnx2snn.evaluate.evaluation import evaluate
from onnx2snn.snn import to_snn


def _calibrate_child(args, method, iters, queue):
    ann = M.load(args.model)
    src = D.open_data(args.calib, None, D.model_inputs(ann), D.Preprocess(args.mean, args.std))
    cfg = CalibConfig(method=method, iters=iters, batch_size=args.batch_size, augment=args.augment, lr=args.lr)
    n = batches_needed(cfg, len(src))
    batches = list(Bt.calibration_batches(src, args.batch_size, n, 0, args.augment))
    sess = runtime.session(ann)
    start = time.perf_counter()
    for b in batches:
        sess.run(None, b)
    ann_s = time.perf_counter() - start
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    th = calibrate(ann, batches, CalibConfig(method=method, iters=n, batch_size=args.batch_size, lr=args.lr))
    cal_s = time.perf_counter() - start
    queue.put({"method": method, "batches": n, "calib_s": cal_s, "ann_same_batches_s": ann_s,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "rss_before_calib_mb": base_rss / 1024,
               "thresholds": {k: v.tolist() for k, v in th.values.items()}, "info": th.info})


def calibrate_isolated(args, method, iters):
    queue = mp.get_context("fork").Queue()
    proc = mp.get_context("fork").Process(target=_calibrate_child, args=(args, method, iters, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def speed(snn, ann, x, t, repeats=3):
    s_snn, s_ann = runtime.session(snn), runtime.session(ann)
    feeds = {"input": x}
    best_snn = best_seconds(lambda: s_snn.run(None, feeds), repeats)
    best_ann = best_seconds(lambda: s_ann.run(None, feeds), repeats, inner=5)
    n = len(x)
    return {"snn_ms_per_img": 1e3 * best_snn / n, "ann_ms_per_img": 1e3 * best_ann / n,
            "ratio_snn_over_T_ann": best_snn / (t * best_ann)}


def evaluate_variant(args, ann, th, pool, delay, ts, val, calib_src):
    """Rows {T, D, accuracy, agreement, rel_error}: one simulation up to max(ts) for a fixed delay;
    with 'auto' the delay is chosen per T on calibration samples and each T is simulated alone."""
    keys = ("T", "accuracy", "agreement", "rel_error")
    batches = lambda: Bt.eval_batches(val, args.eval_batch, args.limit)
    if delay != "auto":
        d = int(delay)
        snn, _ = to_snn(ann, th, SNNConfig(timesteps=max(ts), delay=d, maxpool=pool))
        ev = evaluate(snn, batches(), [t for t in ts if t > d], ann)
        return [dict({k: r[k] for k in keys}, D=d) for r in ev.rows], ev.ann_accuracy
    rows, ann_acc = [], None
    for t in ts:
        cfg = SNNConfig(timesteps=t, maxpool=pool)
        choice = api.choose_delay_on(ann, th, cfg, calib_src, args.delay_samples)
        snn, _ = to_snn(ann, th, SNNConfig(timesteps=t, delay=choice.delay, maxpool=pool))
        ev = evaluate(snn, batches(), [t], ann)
        rows.append(dict({k: ev.rows[0][k] for k in keys}, D=choice.delay))
        ann_acc = ev.ann_accuracy
    return rows, ann_acc


def main():
    p = parser(__doc__)
    p.add_argument("--calib", required=True)
    p.add_argument("--methods", default="ltb,percentile")
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--cost-iters", type=int, default=200, help="iters for the timing/memory run")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--augment", action="store_true")
    p.add_argument("--timesteps", default="16,32,64,128")
    p.add_argument("--limit", type=int)
    p.add_argument("--eval-batch", type=int, default=20)
    p.add_argument("--lr", type=float, default=CalibConfig.lr, help=f"LTB learning rate ({CalibConfig.lr})")
    p.add_argument("--delays", default="0",
                   help="readout delays to evaluate, comma list of integers and/or 'auto' (chosen per T on "
                        "--delay-samples calibration samples, then each T simulated on its own)")
    p.add_argument("--delay-samples", type=int, default=200)
    p.add_argument("--also-move", action="store_true", help="also evaluate the paper's plain MaxPool move")
    p.add_argument("--skip-cost", action="store_true", help="skip the calibration time/memory run")
    p.add_argument("--skip-speed", action="store_true", help="skip the T=64 speed run")
    p.add_argument("--cost-only", action="store_true", help="only the calibration time/memory run")
    p.add_argument("--json")
    args = p.parse_args()
    ts = [int(t) for t in args.timesteps.split(",")]
    ann = M.load(args.model)
    prep = D.Preprocess(args.mean, args.std)
    val = D.open_data(args.val, None, D.model_inputs(ann), prep)
    report = {"model": Path(args.model).name, "iters": args.iters, "batch_size": args.batch_size, "runs": []}

    if not args.skip_cost:
        cost = calibrate_isolated(args, "ltb", args.cost_iters)
        report["calibration_cost"] = {k: v for k, v in cost.items() if k not in ("thresholds", "info")}
        c = report["calibration_cost"]
        print(f"[cost] ltb {c['batches']} batches x {args.batch_size}: calibration {c['calib_s']:.1f}s, "
              f"ANN over the same batches {c['ann_same_batches_s']:.1f}s, "
              f"ratio {c['calib_s'] / c['ann_same_batches_s']:.2f}; peak RSS {c['peak_rss_mb']:.0f} MB "
              f"(before calibration {c['rss_before_calib_mb']:.0f} MB)", flush=True)
    if args.cost_only:
        return
    calib_src = D.open_data(args.calib, None, D.model_inputs(ann), prep)
    for method in args.methods.split(","):
        res = calibrate_isolated(args, method, args.iters)
        th = onnx2snn.Thresholds({k: np.asarray(v, np.float32) for k, v in res["thresholds"].items()},
                                 method, res["info"])
        pools = [("spiking", method)] + ([("move", method + "+move")] if args.also_move else [])
        for pool, base in pools:
            for delay in args.delays.split(","):
                label = base + ("" if delay == "0" else f"+delay={delay}")
                start = time.perf_counter()
                rows, ann_acc = evaluate_variant(args, ann, th, pool, delay, ts, val, calib_src)
                row = {"label": label, "calib_s": res["calib_s"], "batches": res["batches"],
                       "ann_accuracy": ann_acc, "eval_s": time.perf_counter() - start, "snn": rows}
                report["runs"].append(row)
                accs = "  ".join(f"T={r['T']}" + ("" if delay == "0" else f" (D={r['D']})") +
                                 f": {100 * r['accuracy']:.1f}%" for r in rows)
                print(f"[{label}] ANN {100 * ann_acc:.1f}%  SNN {accs}  "
                      f"(calibration {res['calib_s']:.0f}s, {res['batches']} batches)", flush=True)

    if not args.skip_speed:
        snn64, _ = to_snn(ann, th, SNNConfig(timesteps=64))
        x, _ = val.batch(list(range(16)))
        sp = speed(snn64, ann, x["input"], 64)
        report["speed_T64"] = sp
        print(f"[speed] T=64: SNN {sp['snn_ms_per_img']:.1f} ms/img, ANN {sp['ann_ms_per_img']:.3f} ms/img, "
              f"SNN / (T x ANN) = {sp['ratio_snn_over_T_ann']:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
