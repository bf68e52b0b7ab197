"""A real pretrained MobileNetV2 against its ANN: agreement, top-1, relative output error and SOPs per
T for each neuron recipe, and the whole conversion's time (calibration, corrections, delay, check).

The network is the MobileNetV2 1.0 backbone from npm's `@mediapipe/objectron` (tools.mobile_models
writes `mobilenet_v2_224_features.onnx`: [N, 3, 224, 224] in [-1, 1] -> 1280 pooled features), at
`--size` pixels (the backbone is fully convolutional), with a classifier-shaped output: a linear
head fitted here by logistic regression on the features of the `calib` images of `--cifar`
(CIFAR-10 upscaled; the head is the only part fitted, the 52 convolutions keep their pretrained
weights). Agreement is the SNN's top-1 against the ANN's on `--limit` images of `val`; top-1 is
against CIFAR's labels (a probe on 1,000 images: low, and beside the point).

One calibration with the defaults is shared by every recipe (saved thresholds, the corrections and
the delay refitted per recipe and T); `--full` times one whole default conversion per T instead.

    python -m tools.mobile_models /tmp/mobile
    python -m tools.bench_mobile /tmp/mobile/mobilenet_v2_224_features.onnx --cifar ../shared/bench/cifar10 \
        [--size 112] [--timesteps 64,128] [--recipes "binary;--signed;--spikes burst:2"] [--limit 200]

Needs scikit-learn (the `test` extra) and Pillow.
"""
from __future__ import annotations

import argparse
import json
import shlex
import tempfile
import time
from pathlib import Path

import numpy as np

MEAN = STD = (0.5, 0.5, 0.5)          # the backbone takes [-1, 1]


def _images(folder: Path, size: int):
    from PIL import Image
    xs, ys = [], []
    for ci, c in enumerate(sorted(p.name for p in folder.iterdir() if p.is_dir())):
        for f in sorted((folder / c).iterdir()):
            im = Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)
            xs.append((np.asarray(im, np.float32) / 255.0 - 0.5) / 0.5)
            ys.append(ci)
    return np.stack(xs).transpose(0, 3, 1, 2).copy(), np.asarray(ys)


def classifier(features_path: Path, cifar: Path, size: int, out: Path) -> dict:
    """The backbone at `size` with a fitted linear head ([N, 10] logits), written to `out`."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.linear_model import LogisticRegression
    m = onnx.load(str(features_path))
    inp = m.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    dims[0].dim_param = "N"
    dims[2].dim_value = dims[3].dim_value = size
    del m.graph.value_info[:]
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])

    def feats(x):
        return np.concatenate([sess.run(None, {inp.name: x[i:i + 50]})[0] for i in range(0, len(x), 50)])
    (xc, yc), (xv, yv) = _images(cifar / "calib", size), _images(cifar / "val", size)
    fc, fv = feats(xc), feats(xv)
    mu, sd = fc.mean(0), fc.std(0) + 1e-3
    clf = LogisticRegression(C=0.05, max_iter=3000).fit((fc - mu) / sd, yc)
    w = (clf.coef_ / sd).astype(np.float32)
    b = (clf.intercept_ - (clf.coef_ * mu / sd).sum(1)).astype(np.float32)
    m.graph.initializer.extend([numpy_helper.from_array(w, "probe/W"), numpy_helper.from_array(b, "probe/b")])
    m.graph.node.append(helper.make_node("Gemm", [m.graph.output[0].name, "probe/W", "probe/b"], ["logits"],
                                         name="probe", transB=1))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]))
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return {"probe_val_top1": float(clf.score((fv - mu) / sd, yv)), "size": size}


def run(model: Path, cifar: Path, timesteps, recipes, limit: int, work: Path, full: bool) -> list:
    from onnx2snn import CalibConfig, convert, evaluate_file
    from onnx2snn.cli.parser import build_parser
    from onnx2snn.cli.convert import configs
    from onnx2snn.data import Preprocess
    prep = Preprocess(mean=MEAN, std=STD)
    rows, th = [], work / "defaults.th.json"
    if not full:
        start = time.perf_counter()
        convert(str(model), data=str(cifar / "calib"), prep=prep, calib=CalibConfig(), write=False,
                save_thresholds=str(th))
        print(f"calibration with the defaults (saved): {time.perf_counter() - start:.0f} s", flush=True)
    parser = build_parser()
    for recipe in recipes:
        for t in timesteps:
            argv = ["convert", str(model), "--data", str(cifar / "calib"), "-T", str(t)] + shlex.split(recipe)
            if not full:
                argv += ["--thresholds", str(th)]
            _, snn = configs(parser.parse_args(argv))
            out = work / f"snn_{len(rows)}.onnx"
            start = time.perf_counter()
            conv = convert(str(model), data=str(cifar / "calib"), prep=prep, snn=snn, output=str(out),
                           thresholds=None if full else str(th), check_samples=64 if full else 0)
            seconds = time.perf_counter() - start
            res = evaluate_file(str(out), str(cifar / "val"), ann_path=str(model), timesteps=[t], limit=limit,
                                prep=prep)
            r = res.rows[0]
            rows.append({"recipe": recipe or "defaults", "T": t, "delay": r["delay"], "top1": r["accuracy"],
                         "ann_top1": res.ann_accuracy, "agreement": r["agreement"], "rel_error": r["rel_error"],
                         "sops": r["sops"], "convert_seconds": round(seconds, 1),
                         "steps": {k: round(v, 1) for k, v in conv.timings.items()}})
            print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    return (f"{r['recipe']:<28} T={r['T']:<4} D={r['delay']:<3} agreement {100 * r['agreement']:6.2f}%  "
            f"top-1 {100 * r['top1']:6.2f}% (ANN {100 * r['ann_top1']:.2f}%)  rel.error {r['rel_error']:.4f}  "
            f"SOPs/img {r['sops']:.3g}  convert {r['convert_seconds']:.0f} s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("features", type=Path, help="mobilenet_v2_224_features.onnx (python -m tools.mobile_models)")
    ap.add_argument("--cifar", type=Path, required=True, help="a folder with calib/<class>/ and val/<class>/ images")
    ap.add_argument("--size", type=int, default=224, help="input pixels (224)")
    ap.add_argument("--timesteps", default="64,128")
    ap.add_argument("--recipes", default=";--signed",
                    help="';'-separated convert flags, '' = the defaults (default: ';--signed')")
    ap.add_argument("--limit", type=int, default=200, help="val images scored (200)")
    ap.add_argument("--full", action="store_true",
                    help="a whole conversion per recipe and T (calibration and the check after converting "
                         "included), timed")
    ap.add_argument("--json", help="write the rows as JSON")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / f"mobilenet_v2_{args.size}_cifar_probe.onnx"
        print(json.dumps(classifier(args.features, args.cifar, args.size, model)), flush=True)
        rows = run(model, args.cifar, [int(t) for t in args.timesteps.split(",")], args.recipes.split(";"),
                   args.limit, work, args.full)
    if args.json:
        from onnx2snn.files import write_atomic
        write_atomic(Path(args.json), json.dumps(rows, indent=1).encode(), "--json")


if __name__ == "__main__":
    main()
