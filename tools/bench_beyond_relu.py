"""Networks without ReLU: accuracy per T against the ANN, SOPs and analog MACs per image, with
expectation compensation (the default) against --keep-analog (the same neurons, the non-linear
nodes evaluated on each step's input instead).

Models: a SiLU CNN with squeeze-and-excitation gates and a tiny vision transformer (GELU,
LayerNorm, softmax attention), trained here on scikit-learn's digits (tools.fixtures.digits); each
converted with the defaults at each T (only -T given) and evaluated on the held-out digits. With
`--cifar DIR` (a folder with calib/<class>/*.jpg and val/<class>/*.jpg, e.g. ../shared/bench/cifar10)
the same architectures at 32x32x3, and a MobileNetV3-Small-style network (HardSwish, HardSigmoid
gates, depthwise convolutions; tools.fixtures.architectures), are trained on the calib images and
evaluated on the val images instead.

    python -m tools.bench_beyond_relu [--timesteps 8,16,32,64,128] [--models silu_se,vit] [--json FILE]
    python -m tools.bench_beyond_relu --cifar ../shared/bench/cifar10 --models silu_se,vit,mobilenet_v3

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
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _cifar_net(name):
    if name == "silu_se":
        return digits.silu_se_net(3, width=32)
    if name == "vit":
        return digits.vit_net(3, image=32, patch=4, dim=64, heads=4, depth=4)
    from tools.fixtures import architectures
    return architectures.mobilenet_v3_small()


def _images(folder: Path):
    """(x NCHW float32, normalised like CIFAR-10 training; y class ids in sorted folder order)."""
    from PIL import Image
    xs, ys = [], []
    for label, cls in enumerate(sorted(p.name for p in folder.iterdir() if p.is_dir())):
        for f in sorted((folder / cls).glob("*.jpg")):
            xs.append(np.asarray(Image.open(f).convert("RGB"), np.float32) / 255.0)
            ys.append(label)
    x = (np.stack(xs) - np.array(CIFAR_MEAN, np.float32)) / np.array(CIFAR_STD, np.float32)
    return x.transpose(0, 3, 1, 2).astype(np.float32).copy(), np.array(ys, np.int64)


def _train_cifar(net, x, y, epochs: int, seed: int = 0):
    """Adam with random crops (padding 4) and horizontal flips."""
    import torch
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=5e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            b = torch.nn.functional.pad(xt[idx], (4, 4, 4, 4), mode="reflect")
            i, j = torch.randint(0, 9, (2,), generator=gen).tolist()
            b = b[:, :, i:i + 32, j:j + 32]
            if torch.rand(1, generator=gen).item() < 0.5:
                b = b.flip(3)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(b), yt[idx]).backward()
            opt.step()
    return net.eval()


def _row(name, mode, t, res, seconds):
    r = res.rows[0]
    return {"model": name, "mode": mode, "T": t, "ann_top1": res.ann_accuracy, "snn_top1": r["accuracy"],
            "agreement": r["agreement"], "sops": r["sops"], "analog_macs": r.get("analog_macs"),
            "ann_macs": res.ann_macs, "spiking_fraction": res.spiking_fraction, "convert_s": round(seconds, 1)}


def run(timesteps, models, folder: Path, cifar: Path | None = None, epochs: int = 60) -> list:
    if cifar is None:
        x_train, y_train, x_test, y_test = digits.digits_split(0)
    else:
        (x_train, y_train), (x_test, y_test) = _images(cifar / "calib"), _images(cifar / "val")
    np.savez(folder / "calib.npz", input=x_train, y=y_train)
    np.savez(folder / "test.npz", input=x_test, y=y_test)
    rows = []
    for name in models:
        if cifar is None:
            net, x = MODELS[name]()
        else:
            start = time.perf_counter()
            net, x = _train_cifar(_cifar_net(name), x_train, y_train, epochs), x_train
            print(f"{name}: trained on {len(x_train)} images in {time.perf_counter() - start:.0f}s", flush=True)
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
    ap.add_argument("--cifar", help="train on DIR/calib and evaluate on DIR/val (CIFAR-10-style JPEG folders)")
    ap.add_argument("--epochs", type=int, default=60, help="training epochs with --cifar")
    args = ap.parse_args(argv)
    ts = [int(t) for t in args.timesteps.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(ts, args.models.split(","), Path(tmp), Path(args.cifar) if args.cifar else None, args.epochs)
    if args.json:
        write_atomic(Path(args.json), json.dumps(rows, indent=1).encode(), "--json")


if __name__ == "__main__":
    main()
