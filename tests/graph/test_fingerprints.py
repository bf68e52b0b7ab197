"""Pinned outputs: the SNNs of exactly representable models (integer weights and inputs, power-of-two
thresholds, corrections and averaging windows), so every sum is exact and the outputs' bytes are the
same on any CPU and onnxruntime. A change to what the converter builds shows here as a changed hash:
if it is intended, say so in CHANGELOG.md and pin the new hashes with

    python -m tests.graph.test_fingerprints --pin        # from the repository root

The bench models' float outputs are pinned by tools/fingerprint_forms.py (tools/fingerprints/)."""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tools.fixtures import graphs
from onnx2snn import SNNConfig, Thresholds, runtime, to_snn
from onnx2snn.ops import reference
from onnx2snn.graph import onnx_io as M
from onnx2snn.graph.analyse import find_activations

PINNED = Path(__file__).with_name("fingerprints.json")
MODELS = {"residual": graphs.residual_integer_model, "stem_pool": lambda: graphs.stem_pool_model(integer=True),
          "spiking_pool_mixed": lambda: graphs.spiking_pool_model(mixed=True)}
CONFIGS = {"binary": {}, "v_init_0": {"v_init": 0.0}, "burst:4": {"spikes": "burst:4"},
           "signed": {"signed": True}, "maxpool_move": {"maxpool": "move"},
           "corrected": {"correct": "both"}, "loop_chunk_4": {"form": "loop", "chunk": 4}}


def _thresholds(model, corrected: bool) -> Thresholds:
    """Powers of two; `corrected`: with a bias and an initial potential that are powers of two too."""
    acts = find_activations(M.to_graph(M.load_proto(model)))
    rng = np.random.default_rng(3)
    th = Thresholds({a.name: (2.0 ** rng.integers(0, 4, size=a.channels)).astype(np.float32) for a in acts}, "manual")
    if corrected:
        th.bias = {a.name: (2.0 ** -rng.integers(1, 4, size=a.channels)).astype(np.float32) for a in acts}
        th.info["correction"] = {"kind": "bias", "timesteps": 18, "samples": 1, "steps": []}
    return th


def fingerprints() -> dict:
    """'model/config' -> SHA-256 of the NumPy reference's outputs (onnxruntime's are checked equal)."""
    result = {}
    for name, make in MODELS.items():
        model = make()
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
        x = np.random.default_rng(1).integers(-3, 6, size=[6] + shape).astype(np.float32)
        for key, kw in CONFIGS.items():
            kw = dict(kw)
            corrected = kw.pop("correct", None) is not None
            snn, _ = to_snn(model, _thresholds(model, corrected), SNNConfig(timesteps=18, delay=2, **kw))
            out = runtime.session(snn).run(None, {"input": x})[0]
            if kw.get("form") != "loop":
                assert np.array_equal(out, reference.run(snn, {"input": x})[0]), (name, key)
            result[f"{name}/{key}"] = hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest()
    return result


def test_the_snns_of_exact_models_give_the_pinned_outputs():
    pinned = json.loads(PINNED.read_text())
    now = fingerprints()
    changed = sorted(k for k in set(now) | set(pinned) if now.get(k) != pinned.get(k))
    assert not changed, f"outputs changed: {changed}; if intended, note it in CHANGELOG.md and re-pin"


if __name__ == "__main__" and sys.argv[1:] == ["--pin"]:
    PINNED.write_text(json.dumps(fingerprints(), indent=1, sort_keys=True) + "\n")
    print(f"pinned {PINNED}")
