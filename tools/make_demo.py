"""Regenerate the demo bundled in onnx2snn/demo_data/: a digits CNN (ONNX) and its data (NPZ).

    python tools/make_demo.py            # needs the `test` extra (torch, scikit-learn)
"""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.models import digits_cnn, digits_split, export  # noqa: E402


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
