"""At the paper's scale: ImageNet-sized classifiers, a segmenter and a detector's heads converted with
the defaults and evaluated up to T=256 on this machine, each stage in its own process so that its
peak resident memory (VmHWM) is its own.

    python tools/bench_scale.py --models resnet18,resnet50 --timesteps 32,64,128,256 --json scale.jsonl

Architectures come from tools/scale_models.py with random weights (time and memory, not accuracy;
the inputs are random normal images). Per model it prints the seconds of each stage (export,
calibration, correction, delay choice, the whole conversion), the memory budget and the batch sizes
chosen, the peak RSS of the conversion and of `eval` per graph form (unrolled, in slices of steps
when one sample does not fit the budget at the largest T; and the loop form with --chunk), and the SNN's relative output error against the ANN at each T. The estimate of
runtime/memory.py for the largest evaluation batch is printed beside the measured peak.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np

import scale_models
from benchcommon import high_water_mb


def _convert(model, calib, out, iters, extra, queue):
    from onnx2snn import api, cli
    args = cli.build_parser().parse_args(["convert", model, "--data", calib, "--iters", str(iters), *extra])
    calib_cfg, snn = cli.configs(args)
    start = time.perf_counter()
    res = api.convert(model, data=calib, output=out, calib=calib_cfg, snn=snn, thresholds=args.thresholds,
                      save_thresholds=args.save_thresholds, correct_samples=args.correct_samples,
                      delay_samples=args.delay_samples, max_memory=args.max_memory)
    queue.put({"seconds": time.perf_counter() - start, "calibration_s": res.calibration_seconds,
               **{f"{k}_s": v for k, v in res.step_seconds.items()}, "batches": res.batches,
               "memory": res.memory.describe(), "delay": res.delay.delay if res.delay else None,
               "peak_mb": high_water_mb()})


def _eval(snn, data, ann, timesteps, queue):
    from onnx2snn import api
    from onnx2snn.graph.costs import largest_activation
    from onnx2snn.runtime import memory as mem
    from onnx2snn.graph import onnx_io as M
    from onnx2snn.snn.info import SNNInfo
    info = SNNInfo.from_metadata(M.load(snn))
    start = time.perf_counter()
    res = api.evaluate_file(snn, data, ann_path=ann, timesteps=timesteps)
    held = info.chunk if info.looped else res.slice_steps or max(timesteps)   # steps one sample holds at once
    estimate = mem.simulation_sample_bytes(largest_activation(M.load(ann)), held) * res.batch_size
    queue.put({"seconds": time.perf_counter() - start, "rows": [{"T": r["T"], "rel_error": r["rel_error"]}
                                                                for r in res.rows],
               "batch": res.batch_size, "slice_steps": res.slice_steps, "memory": res.memory.describe(), "estimate_mb": estimate / 2 ** 20,
               "peak_mb": high_water_mb()})


def _in_child(fn, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def bench(name: str, args, folder: Path) -> dict:
    size = args.size or scale_models.BUILDERS[name][1]
    start = time.perf_counter()
    model = folder / f"{name}.onnx"
    model.write_bytes(scale_models.export(name, size))
    export_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    calib, test = folder / f"{name}_calib.npz", folder / f"{name}_test.npz"
    np.savez(calib, input=rng.normal(size=(args.calib_samples, 3, size, size)).astype(np.float32))
    np.savez(test, input=rng.normal(size=(args.eval_samples, 3, size, size)).astype(np.float32))
    th = folder / f"{name}.thresholds.npz"
    row = {"model": name, "size": size, "export_s": round(export_s, 1)}
    conv = _in_child(_convert, str(model), str(calib), str(folder / f"{name}.snn.onnx"), args.iters,
                     ["--save-thresholds", str(th)])
    row["convert"] = conv
    print(f"{name} {size}x{size}: export {export_s:.0f}s; conversion with the defaults (--iters {args.iters}) "
          f"{conv['seconds']:.0f}s: calibration {conv['calibration_s']:.0f}s, correction "
          f"{conv.get('correction_s', 0):.0f}s, delay {conv.get('delay_s', 0):.0f}s; peak RSS {conv['peak_mb']:.0f} MB; "
          f"budget {conv['memory']}, batches {conv['batches']}", flush=True)
    ts = [int(t) for t in args.timesteps.split(",")]
    forms = {"unrolled": folder / f"{name}.snn.onnx"}
    if args.chunk:
        loop = folder / f"{name}.loop.snn.onnx"
        _in_child(_convert, str(model), str(calib), str(loop), args.iters,
                  ["--thresholds", str(th), "--form", "loop", "--chunk", str(args.chunk)])
        forms[f"loop, chunk {args.chunk}"] = loop
    row["eval"] = {}
    for form, path in forms.items():
        ev = _in_child(_eval, str(path), str(test), str(model), ts)
        row["eval"][form] = ev
        print(f"  eval ({form}) T={','.join(map(str, ts))} on {args.eval_samples} image(s): {ev['seconds']:.0f}s, "
              f"batch {ev['batch']}" + (f" x {ev['slice_steps']} steps per run" if ev.get("slice_steps") else "")
              + f", peak RSS {ev['peak_mb']:.0f} MB (estimate for the batch {ev['estimate_mb']:.0f} MB); "
              "relative output error " + ", ".join(f"T={r['T']} {r['rel_error']:.3f}" for r in ev["rows"]),
              flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,resnet50,deeplabv3,retinanet")
    p.add_argument("--timesteps", default="32,64,128,256", help="T to evaluate (one simulation up to the largest)")
    p.add_argument("--size", type=int, help="input size (default: the model's: 224, 256 or 320)")
    p.add_argument("--iters", type=int, default=20, help="calibration batches (reduced; the default T is kept)")
    p.add_argument("--calib-samples", type=int, default=16,
                   help="calibration images; the correction and the delay choice use all of them")
    p.add_argument("--eval-samples", type=int, default=2)
    p.add_argument("--chunk", type=int, default=8, help="also evaluate the loop form with this chunk (0: skip)")
    p.add_argument("--json", help="append one JSON line per model")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            row = bench(name, args, Path(tmp))
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
