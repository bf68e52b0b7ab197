"""Networks without ReLU: accuracy per T against the ANN, SOPs and analog MACs per image, with
expectation compensation (the default) against --keep-analog (the same neurons, the non-linear
nodes evaluated on each step's input instead).

Models: a SiLU CNN with squeeze-and-excitation gates and a tiny vision transformer (GELU,
LayerNorm, softmax attention), trained here on scikit-learn's digits (tools.fixtures.digits); each
converted with the defaults at each T (only -T given) and evaluated on the held-out digits.

    python -m tools.bench_beyond_relu [--timesteps 8,16,32,64,128] [--models silu_se,vit] [--json FILE]

Needs torch and scikit-learn (the `test` extra).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from onnx2snn import SNNConfig, convert, evaluate_file
from onnx2snn.files import write_atomic
from tools.fixtures import digits

MODELS = {"silu_se": digits.digits_silu_se, "vit": digits.digits_vit}


def _row(name, mode, t, res, seconds):
    r = res.rows[0]
    return {"model": name, "mode": mode, "T": t, "ann_top1": res.ann_accuracy, "snn_top1": r["accuracy"],
            "agreement": r["agreement"], "sops": r["sops"], "analog_macs": r.get("analog_macs"),
            "ann_macs": res.ann_macs, "spiking_fraction": res.spiking_fraction, "convert_s": round(seconds, 1)}


def run(timesteps, models, folder: Path) -> list:
    x_train, y_train, x_test, y_test = digits.digits_split(0)
    np.savez(folder / "calib.npz", input=x_train, y=y_train)
    np.savez(folder / "test.npz", input=x_test, y=y_test)
    rows = []
    for name in models:
        net, x = MODELS[name]()
        ann = folder / f"{name}.onnx"
        ann.write_bytes(digits.export(net, x))
        for mode, keep in (("compensation", False), ("keep-analog", True)):
            for t in timesteps:
                out = folder / f"{name}-{mode}-{t}.snn.onnx"
                start = time.perf_counter()
                convert(ann, data=str(folder / "calib.npz"), output=out, snn=SNNConfig(timesteps=t, keep_analog=keep))
                seconds = time.perf_counter() - start
                res = evaluate_file(out, str(folder / "test.npz"), timesteps=[t], ann_path=ann)
                rows.append(_row(name, mode, t, res, seconds))
                print(_line(rows[-1]), flush=True)
    return rows


def _line(r) -> str:
    macs = "-" if r["analog_macs"] is None else f"{r['analog_macs']:.3g}"
    return (f"{r['model']:8s} {r['mode']:12s} T={r['T']:<4d} ANN {100 * r['ann_top1']:.2f}%  SNN "
            f"{100 * r['snn_top1']:.2f}%  agreement {100 * r['agreement']:.2f}%  SOPs/img {r['sops']:.3g}  "
            f"analog MACs/img {macs}  (ANN MACs {r['ann_macs']:.3g}, converted in {r['convert_s']}s)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timesteps", default="8,16,32,64,128")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", help="write the rows as JSON (atomically)")
    args = ap.parse_args(argv)
    ts = [int(t) for t in args.timesteps.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(ts, args.models.split(","), Path(tmp))
    if args.json:
        write_atomic(Path(args.json), json.dumps(rows, indent=1).encode(), "--json")


if __name__ == "__main__":
    main()
