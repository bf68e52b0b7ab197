"""Portable SNN forms on every runtime, against onnxruntime: top-1 agreement, mean relative output
difference and time per image, measured in one run.

    python tools/bench_runtimes.py --model ../shared/bench/models/vgg7_pool_cifar10.onnx \\
        --val ../shared/bench/cifar10/val --mean 0.4914,0.4822,0.4465 --std 0.2470,0.2435,0.2616 \\
        --thresholds vgg7_th.json [-T 32] [--images 64]

Runtimes: onnxruntime, OpenVINO and tract (Python packages; tract with a symbolic batch and with
the input fixed to the batch's shape), onnxruntime-node and onnxruntime-web (WASM) through
tests/js/run.mjs when node and its npm packages are installed. Forms: the --portable default
(unrolled, steps written out), unrolled with a Scan per neuron, loop, loop chunk 8, loop as Scan.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from benchcommon import parser

from onnx2snn import SNNConfig, Thresholds, runtime, to_snn
from onnx2snn import data as D
from onnx2snn.graph import onnx_io as M

JS = Path(__file__).resolve().parents[1] / "tests" / "js"
FORMS = {"unrolled": {}, "unrolled-scan": dict(portable_steps="scan"), "loop": dict(form="loop"),
         "loop-chunk8": dict(form="loop", chunk=8), "loop-scan": dict(form="loop", loop_op="scan")}
RUNTIMES = ["onnxruntime", "openvino", "tract", "tract-fixed", "onnxruntime-node", "onnxruntime-web"]


def _js(backend, path, x, out_name, repeats):
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "x.f32", Path(tmp) / "y.f32"
        x.astype("<f4").tofile(inp)
        proc = subprocess.run(["node", str(JS / "run.mjs"), backend, str(path), "input", str(inp),
                               json.dumps(list(x.shape)), out_name, str(out), str(repeats)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1])
        meta = json.loads(proc.stdout.strip().splitlines()[-1])
        return np.fromfile(out, "<f4").reshape(meta["dims"]), meta["ms"]


def run(name, path, x, out_name, repeats):
    if name.startswith("onnxruntime-"):
        return _js(name.split("-")[1], path, x, out_name, repeats)
    if name == "tract-fixed":          # the input's shape fixed to the batch's, as tract's examples load models
        import tract
        model = tract.onnx().load(str(path))
        model.set_input_fact(0, ",".join(map(str, x.shape)) + ",f32")
        runnable = model.into_model().into_runnable()
        fn = lambda feeds: {out_name: runnable.run([feeds["input"]])[0].to_numpy()}  # noqa: E731
    else:
        fn = runtime.backend(name, path)
    best, y = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        y = fn({"input": x})[out_name]
        best = min(best, (time.perf_counter() - start) * 1e3)
    return np.asarray(y), best


def main():
    p = parser(__doc__)
    p.add_argument("--thresholds", required=True)
    p.add_argument("-T", type=int, default=32)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    ann = M.load(args.model)
    th = Thresholds.load(args.thresholds)
    val = D.open_data(args.val, None, D.model_inputs(ann), D.Preprocess(args.mean, args.std))
    x = val.batch(list(range(0, len(val), max(1, len(val) // args.images)))[:args.images])[0]["input"]
    out_name = ann.graph.output[0].name
    print(f"{'runtime':18} {'form':12} {'top-1 agree':>11} {'mean rel diff':>13} {'ms/image':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for form, kw in FORMS.items():
            snn, _ = to_snn(ann, th, SNNConfig(timesteps=args.T, portable=True, **kw))
            path = Path(tmp) / f"{form}.onnx"
            onnx.save(snn, path)
            ref = None
            for name in RUNTIMES:
                if name.startswith("onnxruntime-") and (shutil.which("node") is None or
                                                        not (JS / "node_modules" / name).exists()):
                    continue
                try:
                    y, ms = run(name, path, x, out_name, args.repeats)
                except Exception as err:   # report and go on: the table shows what each runtime accepts
                    print(f"{name:18} {form:12} {'fails: ' + str(err).splitlines()[0][:90]}")
                    continue
                ref = y if ref is None else ref
                agree = np.mean(y.argmax(1) == ref.argmax(1))
                rel = np.abs(y - ref).mean() / np.abs(ref).mean()
                print(f"{name:18} {form:12} {100 * agree:10.1f}% {rel:13.2e} {ms / len(x):9.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
