"""Post-conversion bias correction: stored with the thresholds, applied the same way in every
form, and it brings a deep SNN's output closer to its ANN at small T on held-out data."""
import numpy as np
import pytest

import graphs
from onnx2snn import CalibConfig, SNNConfig, Thresholds, UserError, reference, runtime, to_snn
from onnx2snn.analyse import analyse
from onnx2snn.calibration import calibrate
from onnx2snn.correction import _clipped_means, _means, correct_bias
from onnx2snn.snn import simulate


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_bias_is_saved_and_loaded_with_the_thresholds(tmp_path, suffix):
    th = Thresholds({"relu1": np.ones(4, np.float32)}, "manual", bias={"relu1": np.array([0.5, -1, 0, 2], np.float32)})
    th.save(tmp_path / f"t{suffix}")
    back = Thresholds.load(tmp_path / f"t{suffix}")
    assert np.array_equal(back.bias["relu1"], th.bias["relu1"]) and list(back.values) == ["relu1"]
    bad = Thresholds({"relu1": np.ones(4, np.float32)}, "manual", bias={"relu1": np.array([np.nan] * 4, np.float32)})
    with pytest.raises(UserError, match="bias correction of 'relu1' is not finite"):
        bad.validate("t")


def test_every_form_applies_the_bias_exactly():
    model = graphs.residual_integer_model()
    acts = analyse(model).activations
    th = Thresholds({a.name: np.full(a.channels, 2.0, np.float32) for a in acts}, "manual",
                    bias={a.name: np.resize(np.array([0.5, -0.25, 1.0, 0.0], np.float32), a.channels) for a in acts})
    x = np.random.default_rng(0).integers(-3, 6, size=(4, 2, 4, 4)).astype(np.float32)
    base, _ = to_snn(model, th, SNNConfig(timesteps=16))
    want = reference.run(base, {"input": x})[0]
    assert not np.array_equal(want, reference.run(to_snn(model, Thresholds(th.values, "manual"),
                                                         SNNConfig(timesteps=16))[0], {"input": x})[0])
    for kw in (dict(), dict(portable=True), dict(form="loop", chunk=4), dict(form="loop", chunk=4, portable=True)):
        got = runtime.session(to_snn(model, th, SNNConfig(timesteps=16, **kw))[0]).run(None, {"input": x})[0]
        assert np.array_equal(got, want), kw


def test_correction_brings_a_deep_snn_closer_to_its_ann():
    model = graphs.deep_chain_model(depth=10, features=16, seed=2)
    rng = np.random.default_rng(0)
    calib = [{"input": rng.normal(size=(50, 16)).astype(np.float32)} for _ in range(4)]
    test = rng.normal(size=(400, 16)).astype(np.float32)
    analysis = analyse(model)
    th = calibrate(analysis, calib * 25, CalibConfig(iters=100))
    cfg = SNNConfig(timesteps=16)
    corrected = correct_bias(analysis, th, cfg, calib)
    assert set(corrected.bias) == {a.name for a in analysis.activations}
    assert corrected.info["correction"]["kind"] == "bias" and corrected.info["correction"]["samples"] == 200
    ann = runtime.session(model).run(None, {"input": test})[0]
    _, layers = to_snn(analysis, th, cfg)
    held = [{"input": test}]
    ann_means = _clipped_means(analysis, th, layers, {l.name: (1, 2) for l in layers}, held)
    err, diff = {}, {}
    for name, t in (("plain", th), ("corrected", corrected)):
        snn, _ = to_snn(analysis, t, cfg)
        out = runtime.session(snn).run(None, {"input": test})[0]
        err[name] = np.linalg.norm(out - ann) / np.linalg.norm(ann)
        stats, names = simulate.with_channel_means(snn, {l.tensor: (1, 2) for l in layers})
        means = _means(runtime.session(stats), names, held)
        diff[name] = np.mean([np.abs(ann_means[l.tensor] - m).mean() for l, m in zip(layers, means)])
    # held-out samples: each neuron's mean output is much closer to the ANN's, and so is the output
    assert diff["corrected"] < 0.6 * diff["plain"], diff
    assert err["corrected"] < err["plain"], err
