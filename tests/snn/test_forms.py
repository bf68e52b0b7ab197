"""Every graph form (unrolled, loop, chunked loop, portable variants) against the NumPy simulation."""
import numpy as np
import onnx
import pytest

from tools.fixtures import graphs
import onnx2snn
from onnx2snn.ops.neuron import DOMAIN
from onnx2snn import CalibConfig, SNNConfig, Thresholds, runtime, to_snn
from onnx2snn.ops import reference
from onnx2snn.graph import onnx_io as M
from onnx2snn.graph.analyse import find_activations
from onnx2snn.errors import UserError

T = 16


def forms(t, odd):
    """Every form; `odd` is a chunk that does not divide t."""
    assert t % odd
    return [dict(form="unrolled"), dict(form="unrolled", portable=True),
            dict(form="unrolled", portable=True, portable_steps="scan"),
            dict(form="loop", chunk=1), dict(form="loop", chunk=1, portable=True),
            dict(form="loop", chunk=odd), dict(form="loop", chunk=odd, portable=True),
            dict(form="loop", chunk=t)]


FORMS = forms(T, 3)


def _run(snn, x, portable):
    return runtime.session(snn).run(None, {"input": x})[0]


def _negative_spikes(snn, x) -> int:
    """How many negative spikes the SNN's neurons send on `x` (NumPy neuron)."""
    model = onnx.ModelProto()
    model.CopyFrom(snn)
    outs = [n.output[0] for n in model.graph.node if n.op_type == "IFNeuron"]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs)
    return sum(int((v < 0).sum()) for v in reference.run(model, {"input": x}, outs))


def _power_of_two_thresholds(model):
    acts = find_activations(M.to_graph(M.load_proto(model)))
    rng = np.random.default_rng(3)
    return Thresholds({a.name: (2.0 ** rng.integers(0, 4, size=a.channels)).astype(np.float32) for a in acts},
                      "manual")


@pytest.mark.parametrize("neuron", ["binary", "burst:2", "burst:4", "binary+signed", "burst:2+signed"])
@pytest.mark.parametrize("make,rising", [(graphs.residual_integer_model, False),
                                         (lambda: graphs.stem_pool_model(integer=True), False),
                                         (graphs.spiking_pool_model, True),
                                         (lambda: graphs.spiking_pool_model(mixed=True), False)],
                         ids=["residual", "stem_pool", "spiking_pool", "spiking_pool_mixed"])
def test_forms_agree_exactly_on_exactly_representable_models(make, rising, neuron):
    """Every form, portable ones included, against the NumPy neuron, with binary and burst spikes
    (θ/2, θ/4: powers of two, so every sum stays exact), either signed or not; the spiking pool
    models put signed currents into spiking max pools (mixed) or only `rising` ones (not mixed)."""
    spikes, signed = neuron.split("+")[0], neuron.endswith("+signed")
    model = make()
    th = _power_of_two_thresholds(model)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(1).integers(-3, 6, size=[6] + shape).astype(np.float32)
    # T - D = 16 steps are averaged: a power of two, so the average is exact too
    base, _ = to_snn(model, th, SNNConfig(timesteps=18, delay=2, spikes=spikes, signed=signed))
    want = reference.run(base, {"input": x})[0]             # NumPy neuron, no onnxruntime
    assert np.any(want != 0)
    if spikes != "binary":     # bursts happen, and change the outputs
        binary = reference.run(to_snn(model, th, SNNConfig(timesteps=18, delay=2))[0], {"input": x})[0]
        assert not np.array_equal(want, binary)
        assert all(a.i == int(spikes[6:]) for n in base.graph.node if n.op_type == "IFNeuron"
                   for a in n.attribute if a.name == "max_spikes")
    if signed:                 # negative spikes happen where a neuron's current falls, and only there
        unsigned = reference.run(to_snn(model, th, SNNConfig(timesteps=18, delay=2, spikes=spikes))[0],
                                 {"input": x})[0]
        assert (_negative_spikes(base, x) == 0) == rising
        if rising:
            assert np.array_equal(want, unsigned)
    for kw in forms(18, 4):
        snn, _ = to_snn(model, th, SNNConfig(timesteps=18, delay=2, spikes=spikes, signed=signed, **kw))
        onnx.checker.check_model(snn)
        got = _run(snn, x, kw.get("portable", False))
        assert np.array_equal(got, want), kw
        if kw.get("portable"):
            assert all(o.domain in ("", "ai.onnx") for o in snn.opset_import)
            assert not any(n.domain == DOMAIN for n in snn.graph.node)


@pytest.mark.parametrize("fixture", ["resnet_path", "mlp_path"])
def test_forms_match_the_numpy_simulation_on_trained_models(request, fixture, digits_npz):
    path = request.getfixturevalue(fixture)
    calib, test = digits_npz
    ann = M.load(path)
    th = onnx2snn.calibrate(ann, onnx2snn.api.open_source(ann, str(calib)), CalibConfig(iters=30))
    x = np.load(test)["input"][:200]
    base, _ = to_snn(ann, th, SNNConfig(timesteps=T))
    want = reference.run(base, {"input": x})[0]
    scale = np.abs(want).max()
    for kw in FORMS:
        snn, _ = to_snn(ann, th, SNNConfig(timesteps=T, **kw))
        got = _run(snn, x, kw.get("portable", False))
        assert got.shape == want.shape
        # float rounding in convolutions may flip a spike that sits exactly at threshold
        assert np.abs(got - want).mean() <= 1e-4 * scale, kw
        assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.995, kw


def test_time_invariant_work_runs_once_in_every_form():
    model = graphs.residual_integer_model()
    th = _power_of_two_thresholds(model)
    for kw in FORMS:
        snn, _ = to_snn(model, th, SNNConfig(timesteps=T, **kw))
        first = [n for n in snn.graph.node if n.op_type == "Conv" and "input" in n.input]
        assert len(first) == 1, kw          # the stem conv reads the N input rows, outside any loop
        loops = [n for n in snn.graph.node if n.op_type == "Loop"]
        if kw["form"] == "loop":
            body = loops[0].attribute[0].g
            assert [n.op_type for n in body.node].count("Conv") == 1   # only conv2 runs per step
        else:
            assert not loops


def test_loop_memory_state_does_not_grow_with_t():
    """The looped model's size and its carried state do not depend on T (only two constants do)."""
    model = graphs.residual_integer_model()
    th = _power_of_two_thresholds(model)
    small, _ = to_snn(model, th, SNNConfig(timesteps=16, form="loop", chunk=2))
    large, _ = to_snn(model, th, SNNConfig(timesteps=4096, form="loop", chunk=2))
    assert abs(len(small.SerializeToString()) - len(large.SerializeToString())) < 16
    x = np.ones((2, 2, 4, 4), np.float32)
    assert runtime.session(large).run(None, {"input": x})[0].shape == (2, 3)


def test_early_exit_keeps_accuracy_with_fewer_steps(cnn_path, digits_npz, tmp_path):
    calib, test = digits_npz
    th = tmp_path / "th.json"
    onnx2snn.convert(cnn_path, data=str(calib), output=tmp_path / "u.onnx", calib=CalibConfig(iters=100),
                     save_thresholds=th)
    full = onnx2snn.convert(cnn_path, thresholds=th, output=tmp_path / "full.onnx",
                            snn=SNNConfig(timesteps=128, form="loop", chunk=4))
    early = onnx2snn.convert(cnn_path, thresholds=th, output=tmp_path / "early.onnx",
                             snn=SNNConfig(timesteps=128, form="loop", chunk=4, early_exit=True))
    data = np.load(test)
    x, y = data["input"], data["y"]
    s_full, s_early = runtime.session(full.output), runtime.session(early.output)
    assert [o.name for o in s_early.get_outputs()] == ["logits", "onnx2snn_steps"]
    acc_full = acc_early = 0
    steps = []
    for i in range(0, len(x), 50):
        acc_full += np.sum(s_full.run(None, {"input": x[i:i + 50]})[0].argmax(1) == y[i:i + 50])
        out, used = s_early.run(None, {"input": x[i:i + 50]})
        acc_early += np.sum(out.argmax(1) == y[i:i + 50])
        steps.append(int(used))
    assert acc_early / len(x) >= acc_full / len(x) - 0.01
    assert 16 <= np.mean(steps) < 128 and all(s % 4 == 0 or s == 128 for s in steps)


def test_eval_gives_the_same_numbers_and_spike_counts_in_every_form(cnn_path, digits_npz, tmp_path):
    from onnx2snn.evaluate.evaluation import evaluate
    calib, test = digits_npz
    ann = M.load(cnn_path)
    th = onnx2snn.calibrate(ann, onnx2snn.api.open_source(ann, str(calib)), CalibConfig(iters=30))
    data = np.load(test)
    batches = [({"input": data["input"][:60]}, data["y"][:60])]
    rows = {}
    for kw in forms(32, 3):
        if 8 % kw.get("chunk", 1):
            continue                      # eval steps must be multiples of the chunk for one simulation
        snn, _ = to_snn(ann, th, SNNConfig(timesteps=32, **kw))   # evaluated beyond the model's T too
        if kw.get("portable") and kw.get("portable_steps", "written") == "written" and kw["form"] == "unrolled":
            # its steps are written out for T=32: that T only, shorter windows read from it
            with pytest.raises(UserError, match="runs at T=32 only.*portable_steps scan"):
                evaluate(snn, batches, [8, 16, 64], ann)
            written = [(r["T"], r["accuracy"], r["sops"]) for r in evaluate(snn, batches, [8, 16, 32], ann).rows]
            continue
        rows[str(kw)] = [(r["T"], r["accuracy"], r["sops"]) for r in evaluate(snn, batches, [8, 16, 64], ann).rows]
    first = next(iter(rows.values()))
    assert all(r[2] > 0 for r in first)
    for key, value in rows.items():
        assert [(t, a) for t, a, _ in value] == [(t, a) for t, a, _ in first], key
        np.testing.assert_allclose([s for _, _, s in value], [s for _, _, s in first], rtol=1e-3, err_msg=key)
    assert [(t, a) for t, a, _ in written[:2]] == [(t, a) for t, a, _ in first[:2]]
    np.testing.assert_allclose([s for _, _, s in written[:2]], [s for _, _, s in first[:2]], rtol=1e-3)
