"""The paper's Table 2 layout (segmentation mIoU, detection mAP per T) for the synthetic tasks of the
tests: a small FCN-style segmenter and a CenterNet-style detector (exported up to its heads, boxes
from a --decode hook), trained here on coloured shapes, converted once with the CLI's defaults and
evaluated with `onnx2snn eval` over a sweep of T (the model's delay scaled to each T).

    python -m tools.bench_tasks --convert-T 128 --timesteps 16,32,64,128,256

Prints one Markdown row per model and the seconds of each stage.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from onnx2snn.cli import main as cli
from tools.fixtures import tasks as tm


def _run(args) -> float:
    start = time.perf_counter()
    code = cli([str(a) for a in args])
    if code:
        raise SystemExit(f"onnx2snn {' '.join(map(str, args))} failed ({code})")
    return time.perf_counter() - start


def bench(folder: Path, convert_t: int, ts: str) -> list:
    rows = []
    start = time.perf_counter()
    net, x = tm.train_segmenter(seed=0)
    (folder / "seg.onnx").write_bytes(tm.export(net, x[:2], ["logits"]))
    train_s = time.perf_counter() - start
    np.savez(folder / "seg_calib.npz", input=tm.shapes_segmentation(300, seed=101)[0])
    test, masks = tm.shapes_segmentation(300, seed=202)
    np.savez(folder / "seg_test.npz", input=test, mask=masks)
    conv_s = _run([folder / "seg.onnx", "--data", folder / "seg_calib.npz", "-o", folder / "seg.snn.onnx",
                   "-T", convert_t, "-q"])
    eval_s = _run(["eval", folder / "seg.snn.onnx", "--data", folder / "seg_test.npz", "--ann", folder / "seg.onnx",
                   "-T", ts, "--json", folder / "seg.json", "-q"])
    rows.append(("synthetic shapes (300 test images, 32x32)", "FCN-style, bilinear x2 head", "miou",
                 json.loads((folder / "seg.json").read_text()), train_s, conv_s, eval_s))

    start = time.perf_counter()
    net, x = tm.train_detector(seed=0)
    (folder / "det.onnx").write_bytes(tm.export(net, x[:2], tm.DETECTOR_OUTPUTS))
    train_s = time.perf_counter() - start
    np.savez(folder / "det_calib.npz", input=tm.shapes_detection(300, seed=101)[0])
    (folder / "decode.py").write_text(tm.decode_source())
    test, boxes, labels = tm.shapes_detection(300, seed=202)
    images, annotations = tm.write_coco_folder(folder / "coco", test, boxes, labels, original_size=64)
    conv_s = _run([folder / "det.onnx", "--data", folder / "det_calib.npz", "-o", folder / "det.snn.onnx",
                   "-T", convert_t, "-q"])
    eval_s = _run(["eval", folder / "det.snn.onnx", "--data", images, "--annotations", annotations,
                   "--decode", f"{folder / 'decode.py'}:decode", "--ann", folder / "det.onnx", "-T", ts,
                   "--json", folder / "det.json", "-q"])
    det = json.loads((folder / "det.json").read_text())
    rows.append(("synthetic shapes (300 test images, 64x64 at 48x48)", "CenterNet-style heads (mAP@.5)",
                 "map50", det, train_s, conv_s, eval_s))
    rows.append(("synthetic shapes (300 test images, 64x64 at 48x48)", "CenterNet-style heads (mAP)",
                 "map", det, train_s, conv_s, eval_s))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--convert-T", type=int, default=128, help="T the models are converted at (default 128)")
    p.add_argument("--timesteps", default="16,32,64,128,256", help="T evaluated")
    args = p.parse_args()
    ts = [int(t) for t in args.timesteps.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench(Path(tmp), args.convert_T, args.timesteps)
    print("| dataset | model | ANN | " + " | ".join(f"T={t}" for t in ts) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in ts) + " |")
    for dataset, model, key, r, *_ in rows:
        by_t = {row["T"]: row for row in r["snn"]}
        cells = [f"{100 * by_t[t]['metrics'][key]:.2f} (D={by_t[t]['delay']})" for t in ts]
        print(f"| {dataset} | {model} | {100 * r['ann']['metrics'][key]:.2f} | " + " | ".join(cells) + " |")
    for dataset, model, key, r, train_s, conv_s, eval_s in rows[:2]:
        print(f"{model}: training {train_s:.1f} s, conversion (T={args.convert_T}) {conv_s:.1f} s, "
              f"eval over T={args.timesteps} {eval_s:.1f} s")


if __name__ == "__main__":
    main()
