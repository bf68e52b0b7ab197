"""Benchmark the graph forms: peak memory vs T, speed vs the unrolled form, early exit.

    python tools/bench_forms.py --model ../shared/bench/models/resnet32_cifar10.onnx \\
        --thresholds r32.json --val ../shared/bench/cifar10/val \\
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225

(thresholds from `onnx2snn MODEL --data calib/ --save-thresholds r32.json`). Memory is the peak
resident set of a fresh process that builds a session and runs one inference on one image; the
increment over the process's size just before the run is shown too. All ratios come from this run.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import numpy as np
from benchcommon import best_seconds, parser

from onnx2snn import SNNConfig, Thresholds, runtime, to_snn
from onnx2snn.files import write_atomic
from onnx2snn.data import batches as Bt
from onnx2snn import data as D
from onnx2snn.graph import onnx_io as M

FORMS = {
    "unrolled": dict(form="unrolled"),
    "loop": dict(form="loop", chunk=1),
    "loop-chunk8": dict(form="loop", chunk=8),
    "unrolled-portable": dict(form="unrolled", portable=True),
    "loop-portable": dict(form="loop", chunk=1, portable=True),
    "loop-chunk8-portable": dict(form="loop", chunk=8, portable=True),
}


def _rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _memory_child(path, x, portable, queue):
    sess = runtime.session(path, threads=0)
    before = _rss_mb()
    sess.run(None, {"input": x})
    queue.put({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "before_run_mb": before})


def peak_memory(path, x, portable):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(str(path), x, portable, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def time_per_image(path, x, portable, repeats=3):
    sess = runtime.session(str(path))
    return 1e3 * best_seconds(lambda: sess.run(None, {"input": x}), repeats) / len(x)


def main():
    p = parser(__doc__)
    p.add_argument("--thresholds", required=True)
    p.add_argument("--out", default="bench_forms_out")
    p.add_argument("--speed-batch", type=int, default=16)
    p.add_argument("--exit-batch", type=int, default=1, help="early exit is decided per batch; 1 = per image")
    p.add_argument("--only-exit", action="store_true", help="skip the memory and speed runs")
    p.add_argument("--skip-exit", action="store_true", help="skip the early-exit run")
    p.add_argument("--limit", type=int)
    p.add_argument("--json")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    ann = M.load(args.model)
    th = Thresholds.load(args.thresholds)
    val = D.open_data(args.val, None, D.model_inputs(ann), D.Preprocess(args.mean, args.std))
    one, _ = val.batch([0])
    report = {"memory": {}, "speed_T64": {}, "early_exit": {}}

    for name, kw in ({} if args.only_exit else FORMS).items():
        row = {}
        for t in (16, 256):
            path = out / f"{name}_T{t}.onnx"
            write_atomic(path, to_snn(ann, th, SNNConfig(timesteps=t, **kw))[0].SerializeToString())
            row[t] = peak_memory(path, one["input"], kw.get("portable", False))
        ratio = row[256]["peak_mb"] / row[16]["peak_mb"]
        inc = [row[t]["peak_mb"] - row[t]["before_run_mb"] for t in (16, 256)]
        report["memory"][name] = {"T16": row[16], "T256": row[256], "peak_ratio": ratio,
                                  "run_increment_mb": inc}
        print(f"[memory] {name:22s} peak RSS T=16 {row[16]['peak_mb']:7.1f} MB  T=256 {row[256]['peak_mb']:7.1f} MB"
              f"  ratio {ratio:.2f}   (increment during the run {inc[0]:.1f} -> {inc[1]:.1f} MB)", flush=True)

    x, _ = val.batch(list(range(args.speed_batch)))
    base = None
    for name, kw in ({} if args.only_exit else FORMS).items():
        path = out / f"{name}_T64.onnx"
        write_atomic(path, to_snn(ann, th, SNNConfig(timesteps=64, **kw))[0].SerializeToString())
        ms = time_per_image(path, x["input"], kw.get("portable", False))
        base = base or ms
        report["speed_T64"][name] = {"ms_per_img": ms, "vs_unrolled": ms / base}
        print(f"[speed]  {name:22s} T=64 {ms:8.2f} ms/img  x{ms / base:.2f} of unrolled", flush=True)

    if args.skip_exit:
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        return
    full_path, ee_path = out / "full_T128.onnx", out / "early_T128.onnx"
    write_atomic(full_path, to_snn(ann, th, SNNConfig(timesteps=128, form="loop", chunk=8))[0].SerializeToString())
    write_atomic(ee_path, to_snn(ann, th, SNNConfig(timesteps=128, form="loop", chunk=8, early_exit=True))[0].SerializeToString())
    s_full, s_ee = runtime.session(str(full_path)), runtime.session(str(ee_path))
    ok_full = ok_ee = n = 0
    steps = []
    t_full = t_ee = 0.0
    for feeds, y in Bt.eval_batches(val, args.exit_batch, args.limit):
        start = time.perf_counter()
        ok_full += int(np.sum(s_full.run(None, feeds)[0].argmax(1) == y))
        t_full += time.perf_counter() - start
        start = time.perf_counter()
        o, used = s_ee.run(None, feeds)
        t_ee += time.perf_counter() - start
        ok_ee += int(np.sum(o.argmax(1) == y))
        steps += [int(used)] * len(y)
        n += len(y)
    report["early_exit"] = {"samples": n, "batch": args.exit_batch, "acc_full_T128": ok_full / n,
                            "acc_early_exit": ok_ee / n, "mean_steps": float(np.mean(steps)),
                            "time_ratio": t_ee / t_full}
    print(f"[early exit] batch {args.exit_batch}: accuracy {100 * ok_ee / n:.1f}% with {np.mean(steps):.1f} "
          f"steps on average vs {100 * ok_full / n:.1f}% at T=128 (time x{t_ee / t_full:.2f})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
