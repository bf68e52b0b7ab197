"""Regenerate the demo bundled in onnx2snn/demo_data/: a digits CNN (ONNX) and its data (NPZ).

    python -m tools.make_demo            # from the repository root; needs the `test` extra (torch, scikit-learn)
"""
from pathlib import Path

import numpy as np

from tools.fixtures.digits import digits_cnn, digits_split, export

ROOT = Path(__file__).resolve().parents[1]


def main():
    out = ROOT / "onnx2snn" / "demo_data"
    out.mkdir(exist_ok=True)
    net, x = digits_cnn(seed=0, epochs=20)
    (out / "digits_cnn.onnx").write_bytes(export(net, x))
    x_train, y_train, x_test, y_test = digits_split(0)
    np.savez_compressed(out / "digits_calib.npz", input=x_train, y=y_train)
    np.savez_compressed(out / "digits_test.npz", input=x_test, y=y_test)
    print("wrote", *sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    main()
