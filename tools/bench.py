"""Cost of the SNN against the dense floor, measured in one run on this machine.

    python tools/bench.py --model ../shared/bench/models/resnet32_cifar10.onnx \\
        --val ../shared/bench/cifar10/calib --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 [-T 32]

Prints, as ratios:
- each graph form's time per batch at T over the floor: the ANN in onnxruntime on one batch of
  T x N images (the same arithmetic as the SNN's, without spikes);
- calibration: wall time (decoding included) and onnxruntime time over the ANN's inference on the
  same batches, with and without --augment;
- peak RSS of each form's inference (a child process each).
"""
from __future__ import annotations

import multiprocessing as mp
import resource
import time

import numpy as np
from benchcommon import best_seconds, parser

from onnx2snn import CalibConfig, SNNConfig, runtime, to_snn
from onnx2snn import batches as Bt
from onnx2snn import data as D
from onnx2snn import model as M
from onnx2snn.analyse import analyse
from onnx2snn.api import calibrate

FORMS = {"unrolled": {}, "loop": dict(form="loop"), "loop-chunk8": dict(form="loop", chunk=8),
         "unrolled-portable": dict(portable=True), "loop-chunk8-portable": dict(form="loop", chunk=8, portable=True)}


def _peak_child(model_bytes, x, queue):
    sess = runtime.session(model_bytes)
    sess.run(None, {"input": x})
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_rss_mb(model_bytes, x) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(model_bytes, x, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def calibration_ratio(analysis, source, batch, iters, augment):
    """(wall, onnxruntime) seconds of calibration over the ANN's inference on the same batches."""
    batches = list(Bt.calibration_batches(source, batch, iters, 0, augment, getattr(source, "layout", "NCHW")))
    ann = runtime.session(analysis.model)
    start = time.perf_counter()
    for b in batches:
        ann.run(None, b)
    ann_s = time.perf_counter() - start
    start = time.perf_counter()
    th = calibrate(analysis, source, CalibConfig(iters=iters, batch_size=batch, augment=augment))
    wall = time.perf_counter() - start
    return wall / ann_s, th.stats.get("session_seconds", float("nan")) / ann_s, th


def main():
    p = parser(__doc__)
    p.add_argument("-T", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--calib-iters", type=int, default=20)
    p.add_argument("--calib-batch", type=int, default=100)
    p.add_argument("--forms", default=",".join(FORMS))
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args()
    ann = M.load(args.model)
    analysis = analyse(ann)
    src = D.open_data(args.val, None, D.model_inputs(ann), D.Preprocess(args.mean, args.std))
    for augment in (False, True):
        wall, ort, th = calibration_ratio(analysis, src, args.calib_batch, args.calib_iters, augment)
        print(f"calibration{' --augment' if augment else ''}: wall {wall:.2f}x, onnxruntime {ort:.2f}x "
              f"the ANN's inference on the same batches", flush=True)
    x = src.batch(list(range(args.batch)))[0]["input"]
    floor_sess = runtime.session(ann)
    tiled = np.concatenate([x] * args.T)
    floor = best_seconds(lambda: floor_sess.run(None, {"input": tiled}), 3)
    print(f"floor: ANN on a batch of T x N = {args.T} x {args.batch}: {1e3 * floor:.1f} ms", flush=True)
    for name in args.forms.split(","):
        snn, _ = to_snn(analysis, th, SNNConfig(timesteps=args.T, **FORMS[name]))
        sess = runtime.session(snn)
        t = best_seconds(lambda: sess.run(None, {"input": x}), 3)
        mem = "" if args.skip_memory else f", peak RSS {peak_rss_mb(snn.SerializeToString(), x):.0f} MB"
        print(f"{name:22} {1e3 * t:8.1f} ms  {t / floor:5.2f}x the floor{mem}", flush=True)


if __name__ == "__main__":
    main()
