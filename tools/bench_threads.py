"""The SNN's time over the dense floor at each onnxruntime thread count, for the project's sessions
and for the plain file, in one run on this machine.

    python tools/bench_threads.py --model ../shared/bench/models/resnet32_cifar10.onnx \\
        --thresholds tools/fingerprints/resnet32_th.json --threads 1,2,4,8,16 [-T 32] [--batch 8] [--profile]

The floor is the ANN in onnxruntime on one batch of T x N images (the SNN's arithmetic without the
spikes). For each thread count and form (unrolled; loop with chunk T) it prints the best of
`--rounds` runs of the SNN on N images over the floor: as the file is written, run by plain
onnxruntime with the operator library registered (what C++, C#, Java and Node users get); the file
`onnx2snn optimize` writes, run by plain onnxruntime with graph optimizations disabled (what those
users get from it); and as onnx2snn's sessions run it (the session-time passes: fused neuron
inputs, blocked layout). The
inputs are random images (timing only); the thresholds come from a file (any thresholds of the
model do). `--profile` adds, at the largest thread count, onnxruntime's own profile of each form
summed by operator type: where the time goes.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fingerprint_forms import environment
from onnx2snn import SNNConfig, Thresholds, runtime, to_snn
from onnx2snn import data as D
from onnx2snn.graph.analyse import analyse

FORMS = {"unrolled": {}, "loop-chunkT": {"form": "loop"}}
VARIANTS = ("plain file", "optimized file", "session")


def plain_session(model, threads: int, optimized: bool) -> ort.InferenceSession:
    """onnxruntime as another binding runs the file: the operator library registered, nothing of
    onnx2snn's sessions; an optimized file with graph optimizations disabled, as its record asks."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.register_custom_ops_library(runtime.library_path())
    if optimized:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def best(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _feeds(model, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in D.model_inputs(model):
        shape = [n if d is None or isinstance(d, str) else d for d in i.shape]
        feeds[i.name] = rng.normal(size=shape).astype(np.float32)
    return feeds


def profile_by_op(sess_factory, feeds: dict) -> dict:
    """onnxruntime's per-node profile of one run (after a warm-up), in ms summed by operator type."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = sess_factory(os.path.join(tmp, "prof"))
        sess.run(None, feeds)
        sess.run(None, feeds)
        path = sess.end_profiling()
        events = json.load(open(path))
    by_op = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1000 / 2
    return dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def _profiled(model, threads: int, rewrite: bool):
    """A factory of profiling sessions for `model` (onnx2snn's session options, profiling on)."""
    def make(prefix):
        original = runtime.sessions._options

        def opts(*a, **k):
            o = original(*a, **k)
            o.enable_profiling, o.profile_file_prefix = True, prefix
            return o
        runtime.sessions._options = opts
        try:
            return runtime.session(model, threads, rewrite=rewrite)
        finally:
            runtime.sessions._options = original
    return make


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--thresholds", required=True)
    p.add_argument("--threads", default="1,2")
    p.add_argument("-T", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    env = environment()
    print(f"{Path(args.model).name}: T={args.T}, N={args.batch}; onnxruntime {ort.__version__}; {env['cpu']} "
          f"({os.cpu_count()} CPUs; {', '.join(env['isa'])})", flush=True)
    analysis = analyse(args.model)
    th = Thresholds.load(args.thresholds)
    snns = {name: to_snn(analysis, th, SNNConfig(timesteps=args.T, delay=0, chunk=args.T if kw else 1, **kw))[0]
            for name, kw in FORMS.items()}
    optimized = {name: runtime.optimize(snn) for name, snn in snns.items()}
    x_snn, x_floor = _feeds(analysis.model, args.batch), _feeds(analysis.model, args.T * args.batch, 1)
    rows = []
    print(f"{'threads':>7} {'floor ms':>9} " + " ".join(f"{f + ' ' + v:>27}" for f in FORMS for v in VARIANTS),
          flush=True)
    for n in threads:
        ann = runtime.session(analysis.model, n)
        floor = best(lambda: ann.run(None, x_floor), args.rounds)
        row = {"threads": n, "floor_s": floor}
        for name, snn in snns.items():
            for variant in VARIANTS:
                sess = (runtime.session(snn, n) if variant == "session" else
                        plain_session(optimized[name] if variant == "optimized file" else snn, n,
                                      variant == "optimized file"))
                row[f"{name} {variant}"] = best(lambda: sess.run(None, x_snn), args.rounds) / floor
        rows.append(row)
        print(f"{n:>7} {1000 * floor:>9.1f} " + " ".join(f"{row[f + ' ' + v]:>26.2f}x" for f in FORMS
                                                         for v in VARIANTS), flush=True)
    if args.profile:
        n = max(threads)
        print(f"\nprofile at {n} threads (ms per run, by operator type; the floor's for comparison):")
        profiles = {"floor (ANN on T*N)": profile_by_op(_profiled(analysis.model, n, False), x_floor)}
        for name, snn in snns.items():
            for variant, rewrite in (("plain file", False), ("session", True)):
                profiles[f"{name} {variant}"] = profile_by_op(_profiled(snn, n, rewrite), x_snn)
        for key, by_op in profiles.items():
            top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(by_op.items())[:8])
            print(f"  {key}: total {sum(by_op.values()):.1f}; {top}")
    print(json.dumps({"model": Path(args.model).name, "onnxruntime": ort.__version__, "environment": env,
                      "rows": rows}))


if __name__ == "__main__":
    main()
