"""Signed spikes (--signed): a neuron whose net spike count is positive sends a negative spike (-θ,
v += θ) when its potential falls below -θ, so a spike sent too early can be taken back and the
neuron's net rate never goes below zero. The operator, the NumPy neuron and every form agree bit for
bit (tests/snn/test_forms.py, tests/ops/test_op_fuzz.py); here: what a negative spike is, the net count the
neuron carries between runs (sliced evaluation, the loop, onnxruntime's blocked layout), how the
spikes are counted for SOPs, the metadata, the command line and the NIR export's refusal."""
import numpy as np
import onnx
import pytest

from tools.fixtures import graphs
from onnx2snn import SNNConfig, Thresholds, runtime, to_snn
from onnx2snn.errors import UserError
from onnx2snn.evaluate.evaluation import evaluate
from onnx2snn.ops.neuron import if_neuron
from onnx2snn.snn import simulate
from onnx2snn.snn.info import SNNInfo


def test_a_negative_spike_takes_back_an_early_spike():
    """θ = 1, v starts at 0.5: +2 fires (v 1.5, count 1); -4 brings v to -2.5: a negative spike (v
    -1.5, count 0); the next -4 finds the count at zero, so nothing. Unsigned, the early spike stays."""
    theta = np.array([1.0], np.float32)
    x = np.array([[2.0], [-4.0], [-4.0], [0.0]], np.float32)
    s, v, n = if_neuron(x, theta, 4, signed=True, return_state=True, return_count=True)
    assert s.reshape(-1).tolist() == [1, -1, 0, 0] and v.item() == -5.5 and n.item() == 0
    assert if_neuron(x, theta, 4).reshape(-1).tolist() == [1, 0, 0, 0]
    # a burst takes back as many as the count allows, one θ per round
    x = np.array([[3.2], [-6.0], [0.0]], np.float32)
    s, n = if_neuron(x, theta, 3, signed=True, max_spikes=4, return_count=True)
    assert s.reshape(-1).tolist() == [3, -3, 0] and n.item() == 0
    with pytest.raises(ValueError, match="signed"):
        if_neuron(x, theta, 3, count=np.zeros((1, 1), np.float32))


@pytest.mark.parametrize("burst", [1, 3])
def test_the_net_count_never_goes_below_zero_and_is_the_sum_of_the_spikes(burst):
    rng = np.random.default_rng(burst)
    t, n, c = 40, 8, 5
    x = rng.normal(0, 1.5, size=(t * n, c)).astype(np.float32)
    theta = rng.uniform(0.5, 2, c).astype(np.float32)
    s, count = if_neuron(x, theta, t, signed=True, max_spikes=burst, return_count=True)
    levels = np.round(s / theta).reshape(t, n, c)
    assert (levels < 0).any() and (levels > 0).any()
    assert np.all(np.cumsum(levels, axis=0) >= 0)                    # never below zero
    assert np.array_equal(count, levels.sum(0).astype(np.float32))   # the count is the net spikes


def _snn(neuron="binary+signed", t=12, **kw):
    model = graphs.stem_pool_model(integer=True)
    acts = [n.name for n in model.graph.node if n.op_type == "Relu"]
    rng = np.random.default_rng(4)
    th = Thresholds({a: (2.0 ** rng.integers(0, 3, size=c)).astype(np.float32) for a, c in zip(acts, (4, 6))},
                    "manual")
    spikes, _, signed = neuron.partition("+")
    snn, _ = to_snn(model, th, SNNConfig(timesteps=t, spikes=spikes, signed=bool(signed), **kw))
    x = np.random.default_rng(1).integers(-3, 6, size=[6, 2, 6, 6]).astype(np.float32)
    return model, th, snn, x


@pytest.mark.parametrize("neuron", ["binary+signed", "burst:2+signed"])
def test_sliced_runs_carry_the_net_count_and_equal_one_run(neuron):
    """The sliced evaluation (simulate.carried_states) carries each neuron's potential and net count
    from one run to the next: 6 + 6 steps equal 12 in one run; with other counts they do not."""
    _, _, snn, x = _snn(neuron)
    info = SNNInfo.from_metadata(snn)
    whole, counts, _ = simulate.unrolled_steps(snn, info, 12)
    half, _, _ = simulate.unrolled_steps(snn, info, 6)
    first, later, pairs = simulate.carried_states(half)
    assert sum("/IFNeuron/2" in out for _, out in pairs) == len(info.neurons)   # one count per neuron
    names = [o.name for o in whole.graph.output]
    want = dict(zip(names, runtime.session(whole).run(names, {"input": x})))
    states = [out for _, out in pairs]
    a = runtime.session(first).run(names + states, {"input": x})
    carried = dict(zip([i for i, _ in pairs], a[len(names):]))
    b = runtime.session(later).run(names, {"input": x, **carried})
    for k, name in enumerate(names):
        assert np.array_equal(np.concatenate([a[k], b[k]]), want[name]), name
    owing = {k: (np.full_like(v, 100) if "/IFNeuron/2" in k else v) for k, v in carried.items()}
    c = runtime.session(later).run(names, {"input": x, **owing})
    assert any(not np.array_equal(p, q) for p, q in zip(b, c))        # the count matters


def test_sops_count_every_negative_spike():
    """The eval graph counts |n| for a step's n·θ: a negative spike costs one, like a positive one."""
    _, _, snn, x = _snn("burst:2+signed", t=8)
    negative = 0
    for name, (levels, counts) in graphs.spike_levels(snn, x, 8).items():
        assert np.array_equal(counts, np.abs(levels).reshape(8, -1).sum(1)), name
        negative += int((levels < 0).sum())
    assert negative > 0


def test_eval_counts_the_same_spikes_in_every_form():
    model, th, _, x = _snn()
    rows = {}
    for kw in ({}, {"portable": True}, {"portable": True, "portable_steps": "scan"}, {"form": "loop"},
               {"form": "loop", "chunk": 3}, {"form": "loop", "chunk": 3, "portable": True},
               {"form": "loop", "chunk": 3, "loop_op": "scan"}):
        snn, _ = to_snn(model, th, SNNConfig(timesteps=12, spikes="burst:2", signed=True, **kw))
        ts = [12] if kw.get("portable") and kw.get("portable_steps", "written") == "written" \
            and kw.get("form") != "loop" else [6, 12]
        rows[str(kw)] = {r["T"]: r["sops"] for r in evaluate(snn, [({"input": x}, None)], ts).rows}
    first = rows["{}"]
    assert all(s > 0 for s in first.values())
    for key, value in rows.items():
        for t, s in value.items():
            assert s == pytest.approx(first[t], rel=1e-6), key


@pytest.mark.parametrize("kw", [{}, {"form": "loop"}, {"form": "loop", "chunk": 4}])
def test_the_blocked_layout_keeps_the_loop_carried_count_and_the_same_outputs(kw):
    """16 channels: onnxruntime may block them (NCHWc); the count stays blocked across iterations
    with the potential, and the session's outputs (neurons fused with their Adds, blocked) equal the
    graph as written."""
    model = graphs.residual_integer_model(channels=16)
    acts = [n.name for n in model.graph.node if n.op_type == "Relu"]
    rng = np.random.default_rng(2)
    th = Thresholds({a: (2.0 ** rng.integers(0, 3, size=16)).astype(np.float32) for a in acts}, "manual")
    snn, _ = to_snn(model, th, SNNConfig(timesteps=12, delay=2, signed=True, **kw))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(0).normal(size=[5] + shape).astype(np.float32)
    want = runtime.session(snn, rewrite=False).run(None, {"input": x})
    got = runtime.session(snn).run(None, {"input": x})
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    unsigned, _ = to_snn(model, th, SNNConfig(timesteps=12, delay=2, **kw))
    assert not np.array_equal(runtime.session(unsigned).run(None, {"input": x})[0], want[0])
    from onnx2snn.runtime import layout
    if layout.block_size() and kw:
        blocked = layout.blocked(snn, runtime.library_path())
        body = next(n for n in blocked.graph.node if n.op_type == "Loop").attribute[0].g
        neurons = [n for n in body.node if n.op_type == "IFNeuron"]
        assert any(a.name == "channel_block" for n in neurons for a in n.attribute)
        assert all(len(n.output) == 3 and len(n.input) == 7 for n in neurons)


def test_metadata_command_line_and_nir_refusal(tmp_path, capsys):
    from onnx2snn.cli import main
    model = graphs.residual_integer_model()
    onnx.save(model, tmp_path / "m.onnx")
    acts = [n.name for n in model.graph.node if n.op_type == "Relu"]
    Thresholds({a: np.full(4, 2.0, np.float32) for a in acts}, "manual").save(tmp_path / "th.json")
    assert main([str(tmp_path / "m.onnx"), "--thresholds", str(tmp_path / "th.json"), "-T", "8",
                 "--spikes", "burst:2", "--signed", "-o", str(tmp_path / "s.onnx")]) == 0
    assert "burst:2 spikes, signed" in capsys.readouterr().out
    snn = onnx.load(tmp_path / "s.onnx")
    meta = {p.key: p.value for p in snn.metadata_props}
    assert meta["onnx2snn.signed"] == "1" and meta["onnx2snn.spikes"] == "burst:2"
    info = SNNInfo.from_metadata(snn)
    assert info.signed and info.neuron == "burst:2+signed"
    assert all({a.name: a.i for a in n.attribute}.get("signed") == 1 for n in snn.graph.node if n.op_type == "IFNeuron")
    plain, _ = to_snn(model, Thresholds.load(tmp_path / "th.json"), SNNConfig(timesteps=8))
    assert not SNNInfo.from_metadata(plain).signed and "onnx2snn.signed" not in {p.key for p in plain.metadata_props}
    pytest.importorskip("nir", reason="the NIR export needs the optional `nir` package")
    assert main([str(tmp_path / "m.onnx"), "--thresholds", str(tmp_path / "th.json"), "-T", "8", "--signed",
                 "-o", str(tmp_path / "b.onnx")]) == 0
    capsys.readouterr()
    assert main(["export-nir", str(tmp_path / "b.onnx"), "-o", str(tmp_path / "b.nir")]) == 1
    err = capsys.readouterr().err
    assert "negative spikes (--signed)" in err and "without --signed" in err and err.count("\n") == 1
    assert not (tmp_path / "b.nir").exists()
    # --nir is judged before calibration: refused with nothing written (a model NIR holds otherwise)
    mlp = graphs.deep_chain_model(depth=2)
    onnx.save(mlp, tmp_path / "mlp.onnx")
    Thresholds({n.name: np.full(16, 2.0, np.float32) for n in mlp.graph.node if n.op_type == "Relu"},
               "manual").save(tmp_path / "mlp.json")
    for flags, words in ((["--signed"], "negative spikes (--signed)"), (["--spikes", "burst:2"], "bursts of up to 2")):
        assert main([str(tmp_path / "mlp.onnx"), "--thresholds", str(tmp_path / "mlp.json"), *flags,
                     "--nir", str(tmp_path / "c.nir"), "-o", str(tmp_path / "c.onnx")]) == 1
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    assert not (tmp_path / "c.onnx").exists() and not (tmp_path / "c.nir").exists()


def test_a_stored_correction_is_reused_only_for_the_neuron_it_was_made_for():
    from onnx2snn.fit.correction import stored
    th = Thresholds({"r": np.ones(2, np.float32)}, "manual",
                    {"correction": {"kind": "both", "timesteps": 8, "spikes": "burst:2"}},
                    bias={"r": np.zeros(2, np.float32)})
    assert SNNConfig(spikes="burst:2", signed=True).neuron == "burst:2+signed"
    assert stored(th, "both", 8, "burst:2") and not stored(th, "both", 8, "burst:2+signed")
    th.info["correction"]["spikes"] = "burst:2+signed"
    assert stored(th, "both", 8, "burst:2+signed") and not stored(th, "both", 8, "burst:2")
    with pytest.raises(UserError, match="signed"):
        SNNConfig(signed="yes")


def test_corrections_are_measured_with_the_signed_neuron(digits_npz, cnn_path, tmp_path):
    """The correction and the delay choice simulate the neuron in use: the thresholds file records
    the signed neuron, and a binary conversion does not reuse it."""
    from onnx2snn import api
    calib, _ = digits_npz
    result = api.convert(str(cnn_path), data=str(calib), output=str(tmp_path / "s.onnx"),
                         snn=SNNConfig(timesteps=16, signed=True, correct="both", delay="auto"),
                         save_thresholds=str(tmp_path / "th.json"), check_samples=0, progress=False,
                         correct_samples=64, delay_samples=64)
    th = Thresholds.load(tmp_path / "th.json")
    assert th.info["correction"]["spikes"] == "binary+signed" and (th.bias or th.potential)
    assert SNNInfo.from_metadata(onnx.load(result.output)).signed
