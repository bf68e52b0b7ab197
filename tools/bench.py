"""Cost of the SNN against the dense floor, measured in one run on this machine.

    python tools/bench.py --model ../shared/bench/models/resnet32_cifar10.onnx \\
        --val ../shared/bench/cifar10/calib --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 [-T 32]
    python tools/bench.py --mobilenet --val ../shared/bench/cifar10/calib [-T 32]

Prints, as ratios measured in this run:
- each graph form's time per batch of N images at T over the floor: the ANN in onnxruntime on one
  batch of T x N images (the same arithmetic as the SNN's, without spikes), for the graph as
  written (`--no-rewrite`'s sessions), as onnx2snn's sessions run it (fused neuron inputs, blocked
  channel layout: runtime.session) and with event-driven convolutions on top;
- SpikingJelly's build of the same SNN (same graph, thresholds and T) when torch and spikingjelly
  are installed (tools/peer_spikingjelly.py);
- calibration: wall time (image decoding included, from a cold decoded-image cache) and
  onnxruntime time over the ANN's inference on the same batches, with and without --augment (best
  of 3 alternating runs of each);
- peak RSS of each form's inference (a child process each).
`--mobilenet` times a MobileNetV2-style network for 32x32 inputs (ReLU6, depthwise convolutions,
linear bottlenecks; random weights: timing only) built with torch (tools/mobilenet_bench_model.py).
"""
from __future__ import annotations

import multiprocessing as mp
import tempfile
import time

import numpy as np
from benchcommon import best_seconds, high_water_mb, parser

from onnx2snn import CalibConfig, SNNConfig, runtime, to_snn
from onnx2snn.data import batches as Bt
from onnx2snn import data as D
from onnx2snn.graph import onnx_io as M
from onnx2snn.graph.analyse import analyse
from onnx2snn.api import calibrate

FORMS = {"unrolled": {}, "loop": dict(form="loop"), "loop-chunk8": dict(form="loop", chunk=8),
         "unrolled-portable": dict(portable=True), "loop-chunk8-portable": dict(form="loop", chunk=8, portable=True)}
VARIANTS = {"as written": dict(rewrite=False), "session": {}, "session+events": dict(event_convs=True)}


def _peak_child(model_bytes, x, options, queue):
    sess = runtime.session(model_bytes, **options)
    sess.run(None, {"input": x})
    queue.put(high_water_mb())


def peak_rss_mb(model_bytes, x, options) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(model_bytes, x, options, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def interleaved_best(runs: dict, rounds: int) -> dict:
    """The best time of each callable over `rounds` rounds that run every one in turn (after a
    warm-up call each), so slow drifts of the machine touch all of them alike."""
    for fn in runs.values():
        fn()
    best = {k: float("inf") for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return best


def calibration_ratio(analysis, open_source, batch, iters, augment, rounds=3):
    """(wall, onnxruntime) seconds of calibration over the ANN's inference on the same batches, each
    the best of `rounds` alternating runs; the calibration reads a freshly opened source (nothing
    decoded yet), as a conversion does."""
    source = open_source()
    batches = list(Bt.calibration_batches(source, batch, iters, 0, augment, getattr(source, "layout", "NCHW")))
    ann = runtime.session(analysis.model)
    ann.run(None, batches[0])
    ann_s = wall = ort_s = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for b in batches:
            ann.run(None, b)
        ann_s = min(ann_s, time.perf_counter() - start)
        start = time.perf_counter()
        th = calibrate(analysis, open_source(), CalibConfig(iters=iters, batch_size=batch, augment=augment))
        wall = min(wall, time.perf_counter() - start)
        ort_s = min(ort_s, th.stats.get("session_seconds", float("nan")))
    return wall / ann_s, ort_s / ann_s, th


def main():
    p = parser(__doc__, model_required=False)
    p.add_argument("-T", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--calib-iters", type=int, default=300)
    p.add_argument("--calib-batch", type=int, default=100)
    p.add_argument("--forms", default=",".join(FORMS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--mobilenet", action="store_true", help="time a MobileNetV2-style network instead of --model")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-calibration", action="store_true")
    args = p.parse_args()
    if not args.model and not args.mobilenet:
        p.error("give --model or --mobilenet")
    tmp = tempfile.TemporaryDirectory(prefix="onnx2snn-bench-")
    if args.mobilenet:
        from mobilenet_bench_model import build
        args.model = build(f"{tmp.name}/mobilenet.onnx")
    ann = M.load(args.model)
    analysis = analyse(ann)
    open_source = lambda: D.open_data(args.val, None, D.model_inputs(ann), D.Preprocess(args.mean, args.std))  # noqa: E731
    th = None
    for augment in (() if args.skip_calibration else (False, True)):
        wall, ort_ratio, th = calibration_ratio(analysis, open_source, args.calib_batch, args.calib_iters, augment)
        print(f"calibration{' --augment' if augment else ''}: wall {wall:.2f}x, onnxruntime {ort_ratio:.2f}x "
              f"the ANN's inference on the same batches", flush=True)
    if th is None:
        th = calibrate(analysis, open_source(), CalibConfig(iters=20, batch_size=50))
    x = open_source().batch(list(range(args.batch)))[0]["input"]
    floor_sess = runtime.session(ann)
    tiled = np.concatenate([x] * args.T)
    runs = {"floor": lambda: floor_sess.run(None, {"input": tiled})}
    models = {}
    for name in args.forms.split(","):
        snn, _ = to_snn(analysis, th, SNNConfig(timesteps=args.T, **FORMS[name]))
        for variant in args.variants.split(","):
            if name.endswith("portable") and variant != "as written":
                continue      # no onnx2snn operators: sessions run it as written
            sess = runtime.session(snn, **VARIANTS[variant])
            runs[(name, variant)] = lambda sess=sess: sess.run(None, {"input": x})
            models[(name, variant)] = snn
    best = interleaved_best(runs, args.rounds)
    floor = best.pop("floor")
    print(f"floor: ANN on a batch of T x N = {args.T} x {args.batch}: {1e3 * floor:.1f} ms "
          f"(each time the best of {args.rounds} rounds, all items timed in turn in each round)", flush=True)
    for (name, variant), t in best.items():
        options = VARIANTS[variant]
        mem = "" if args.skip_memory else \
            f", peak RSS {peak_rss_mb(models[(name, variant)].SerializeToString(), x, options):.0f} MB"
        print(f"{name:22} {variant:15} {1e3 * t:8.1f} ms  {t / floor:5.2f}x the floor{mem}", flush=True)
    _spikingjelly(ann, th, args.T, x, floor)


def _spikingjelly(ann, th, timesteps, x, floor):
    import peer_spikingjelly as peer
    why = peer.available()
    if why:
        print(why)
        return
    import torch
    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
    try:
        snn = peer.SpikingJellySNN(ann, th.values, timesteps)
    except NotImplementedError as err:
        print(f"SpikingJelly timing skipped: {err}")
        return
    t = best_seconds(lambda: snn(x), 3)
    print(f"{'SpikingJelly (torch)':22} {'':15} {1e3 * t:8.1f} ms  {t / floor:5.2f}x the floor", flush=True)


if __name__ == "__main__":
    main()
