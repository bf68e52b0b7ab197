"""Burst spikes (--spikes burst:K): up to K spikes per neuron and step, each worth θ/K of the
calibrated threshold. The operator, the NumPy neuron and every form agree bit for bit
(tests/snn/test_forms.py, tests/ops/test_op_fuzz.py); here: what a burst is, how the spikes are counted for
SOPs, the metadata, the command line and the NIR export's refusal."""
import json

import numpy as np
import onnx
import pytest

from tools.fixtures import graphs
from onnx2snn import SNNConfig, Thresholds, to_snn
from onnx2snn.errors import UserError
from onnx2snn.evaluate.evaluation import evaluate
from onnx2snn.ops.neuron import if_neuron
from onnx2snn.snn.info import SNNInfo


def test_a_burst_is_the_binary_firing_repeated_within_the_step():
    """v = 3.7θ after integrating: binary fires once (v -> 2.7θ, then again next steps); burst:2
    fires twice at once, burst:4 three times (v never exceeds θ after)."""
    theta = np.array([1.0], np.float32)
    x = np.array([[3.2], [0.0], [0.0], [0.0]], np.float32)        # 4 steps of one sample
    for k, want in ((1, [1, 1, 1, 0]), (2, [2, 1, 0, 0]), (4, [3, 0, 0, 0])):
        s, v = if_neuron(x, theta, 4, v_init=0.5, return_state=True, max_spikes=k)
        assert s.reshape(-1).tolist() == want and v.item() == pytest.approx(0.7, abs=1e-6), k
    with pytest.raises(ValueError, match="max_spikes"):
        if_neuron(x, theta, 4, max_spikes=0)


def test_thresholds_are_divided_by_k_and_the_choice_is_recorded(tmp_path):
    model = graphs.residual_integer_model()
    acts = [n.name for n in model.graph.node if n.op_type == "Relu"]
    th = Thresholds({a: np.full(4, 2.0, np.float32) for a in acts}, "manual")
    snn, layers = to_snn(model, th, SNNConfig(timesteps=8, spikes="burst:4"))
    neurons = [n for n in snn.graph.node if n.op_type == "IFNeuron"]
    assert neurons and all({a.name: a.i for a in n.attribute}["max_spikes"] == 4 for n in neurons)
    thetas = {i.name: onnx.numpy_helper.to_array(i) for i in snn.graph.initializer if i.name.endswith(".theta")}
    assert all(np.all(v == 0.5) for v in thetas.values())      # θ/K: K levels within the calibrated range
    info = SNNInfo.from_metadata(snn)
    assert info.spikes == "burst:4" and info.max_spikes == 4
    binary, _ = to_snn(model, th, SNNConfig(timesteps=8))
    assert SNNInfo.from_metadata(binary).spikes == "binary"
    assert not any(a.name == "max_spikes" for n in binary.graph.node for a in n.attribute)
    for bad in ("burst:1", "burst:x", "burst", "graded:2", "burst:65"):
        with pytest.raises(UserError, match="spikes"):
            SNNConfig(spikes=bad)


def test_sops_count_every_spike_of_a_burst():
    """The eval graph counts n for a burst n·θ (not 1): its per-step counts equal the spikes'
    own levels, and bursts make those exceed the number of neurons that fired."""
    model = graphs.residual_integer_model()
    rng = np.random.default_rng(0)
    acts = [n.name for n in model.graph.node if n.op_type == "Relu"]
    th = Thresholds({a: (2.0 ** rng.integers(0, 3, size=4)).astype(np.float32) for a in acts}, "manual")
    th.values[acts[0]][1] = 0                                      # a silent channel (θ = 0) is counted as 0
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = rng.integers(0, 6, size=[5] + shape).astype(np.float32)
    snn, _ = to_snn(model, th, SNNConfig(timesteps=8, spikes="burst:4"))
    burst_seen = False
    for name, (levels, counts) in graphs.spike_levels(snn, x, 8).items():
        assert np.all(levels == np.clip(levels, 0, 4))
        assert np.array_equal(counts, levels.reshape(8, -1).sum(1)), name
        burst_seen |= bool(counts.sum() > np.count_nonzero(levels))
    assert burst_seen
    # the SOPs evaluate reports grow with the bursts' spikes: burst:4 at T=8 spends more than binary
    batches = [({"input": x}, None)]
    binary, _ = to_snn(model, th, SNNConfig(timesteps=8))
    sops = {k: evaluate(m, batches, [8]).rows[0]["sops"] for k, m in (("binary", binary), ("burst", snn))}
    assert sops["burst"] > sops["binary"] > 0


def test_command_line_converts_with_bursts_and_nir_refuses_them(tmp_path, capsys):
    nir = pytest.importorskip("nir", reason="the NIR export needs the optional `nir` package")  # noqa: F841
    from onnx2snn.cli import main
    model = graphs.residual_integer_model()
    onnx.save(model, tmp_path / "m.onnx")
    acts = [n.name for n in model.graph.node if n.op_type == "Relu"]
    Thresholds({a: np.full(4, 2.0, np.float32) for a in acts}, "manual").save(tmp_path / "th.json")
    assert main([str(tmp_path / "m.onnx"), "--thresholds", str(tmp_path / "th.json"), "-T", "8",
                 "--spikes", "burst:2", "-o", str(tmp_path / "s.onnx")]) == 0
    assert "burst:2 spikes" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(tmp_path / "s.onnx").metadata_props}
    assert meta["onnx2snn.spikes"] == "burst:2" and json.loads(meta["onnx2snn.neurons"])[0]["rank"] == 4
    assert main(["export-nir", str(tmp_path / "s.onnx"), "-o", str(tmp_path / "s.nir")]) == 1
    err = capsys.readouterr().err
    assert "bursts of up to 2 spikes per step" in err and "--spikes binary" in err and err.count("\n") == 1
    assert main([str(tmp_path / "m.onnx"), "--thresholds", str(tmp_path / "th.json"), "--spikes", "burst:0",
                 "-o", str(tmp_path / "t.onnx")]) == 1
    assert "--spikes burst:0: expected binary or burst:K" in capsys.readouterr().err


def test_eval_counts_the_same_spikes_in_every_form():
    """Unrolled (custom op and portable), looped (plain and chunked, custom op and portable): the
    same accuracy-free outputs and the same SOPs of a burst:3 model at T = 6 and 12."""
    model = graphs.residual_integer_model()
    rng = np.random.default_rng(1)
    acts = [n.name for n in model.graph.node if n.op_type == "Relu"]
    th = Thresholds({a: rng.uniform(1, 3, size=4).astype(np.float32) for a in acts}, "manual")
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    batches = [({"input": rng.uniform(0, 4, size=[6] + shape).astype(np.float32)}, None)]
    rows = {}
    for kw in ({}, {"portable": True, "portable_steps": "scan"}, {"form": "loop"}, {"form": "loop", "chunk": 3},
               {"form": "loop", "chunk": 3, "portable": True}):
        snn, _ = to_snn(model, th, SNNConfig(timesteps=12, spikes="burst:3", **kw))
        rows[str(kw)] = [(r["T"], r["sops"]) for r in evaluate(snn, batches, [6, 12]).rows]
    first = next(iter(rows.values()))
    assert all(s > 0 for _, s in first)
    for key, value in rows.items():
        np.testing.assert_allclose([s for _, s in value], [s for _, s in first], rtol=1e-6, err_msg=key)


def test_a_stored_correction_is_reused_only_for_the_neuron_it_was_made_for():
    from onnx2snn.fit.correction import stored
    th = Thresholds({"r": np.ones(2, np.float32)}, "manual",
                    {"correction": {"kind": "both", "timesteps": 8, "delay": 1}},
                    bias={"r": np.zeros(2, np.float32)})
    assert stored(th, "both", 8) and not stored(th, "both", 8, "burst:2")      # made for binary spikes
    th.info["correction"]["spikes"] = "burst:2"
    assert stored(th, "both", 8, "burst:2") and not stored(th, "both", 8)
