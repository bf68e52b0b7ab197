"""--delay auto: the readout delay chosen on calibration samples (delayed evaluation)."""
import json

import numpy as np
import onnx
import pytest

import onnx2snn
from onnx2snn import CalibConfig, SNNConfig, evaluate_file
from onnx2snn.fit.delay import candidates
from onnx2snn.graph.onnx_io import get_metadata

from tools.fixtures import graphs


@pytest.fixture(scope="module")
def auto(resnet_path, digits_npz, tmp_path_factory):
    calib, _ = digits_npz
    out = tmp_path_factory.mktemp("delay") / "auto.snn.onnx"
    return onnx2snn.convert(resnet_path, data=str(calib), output=out, calib=CalibConfig(iters=100),
                            snn=SNNConfig(timesteps=32, delay="auto"), delay_samples=120)


def test_search_scores_equal_the_delayed_models_own_outputs(auto, resnet_path, digits_npz, tmp_path):
    """The error the search computed for a window D+1..T is the error of the model built with D."""
    calib, _ = digits_npz
    choice = auto.delay
    assert choice.samples == 120 and set(choice.rel_error) == set(candidates(32))
    assert choice.delay in choice.rel_error
    for d in sorted({0, choice.delay, 7}):
        out = tmp_path / f"d{d}.onnx"
        onnx2snn.convert(resnet_path, data=str(calib), output=out, thresholds=auto.thresholds,
                         snn=SNNConfig(timesteps=32, delay=d))
        row = evaluate_file(out, data=str(calib), ann_path=resnet_path, timesteps=[32], limit=120).rows[0]
        assert row["rel_error"] == pytest.approx(choice.rel_error[d], rel=1e-4), d
        assert row["agreement"] == pytest.approx(choice.agreement[d]), d


def test_a_deep_model_gets_a_delay_that_helps_on_held_out_data(tmp_path):
    """12 neuron layers with mixed-sign weights: the readout has a start-up transient, so D > 0 is
    chosen, recorded, and gives a smaller error than D = 0 on samples the search did not see."""
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", input=rng.normal(size=(300, 16)).astype(np.float32))
    np.savez(tmp_path / "test.npz", input=rng.normal(size=(300, 16)).astype(np.float32))
    onnx.save(graphs.deep_chain_model(), tmp_path / "deep.onnx")
    res = onnx2snn.convert(tmp_path / "deep.onnx", data=str(tmp_path / "calib.npz"), output=tmp_path / "auto.onnx",
                           calib=CalibConfig(iters=50), snn=SNNConfig(timesteps=64, delay="auto"), delay_samples=100)
    meta = get_metadata(onnx.load(res.output))
    assert int(meta["onnx2snn.delay"]) == res.delay.delay > 0
    assert json.loads(meta["onnx2snn.delay_choice"])["samples"] == 100
    plain = onnx2snn.convert(tmp_path / "deep.onnx", output=tmp_path / "plain.onnx", thresholds=res.thresholds,
                             snn=SNNConfig(timesteps=64))
    test = str(tmp_path / "test.npz")
    ann = str(tmp_path / "deep.onnx")
    delayed = evaluate_file(res.output, data=test, ann_path=ann, timesteps=[64]).rows[0]["rel_error"]
    undelayed = evaluate_file(plain.output, data=test, ann_path=ann, timesteps=[64]).rows[0]["rel_error"]
    assert delayed < undelayed, (delayed, undelayed)


def test_a_shallow_model_may_keep_no_delay(auto):
    """D = 0 is a candidate like any other: the 9-neuron digits ResNet at T=32 keeps it."""
    assert auto.delay.rel_error[0] == min(auto.delay.rel_error.values())
    assert auto.delay.delay == 0 and int(get_metadata(auto.snn)["onnx2snn.delay"]) == 0


def test_cli_delay_auto_and_its_errors(cnn_path, digits_npz, tmp_path):
    from tests.support.cli import one_line_error, run_cli
    calib, test = digits_npz
    out = tmp_path / "auto.snn.onnx"
    code, stdout, err = run_cli(cnn_path, "--data", calib, "-o", out, "--iters", 20, "-T", 32,
                             "--delay", "auto", "--delay-samples", 60, "--check", 0)
    assert code == 0, err
    chosen = int(get_metadata(onnx.load(out))["onnx2snn.delay"])
    assert f"delay D={chosen} chosen on 60 samples" in stdout
    # eval's default T list: the model's T/4, T/2, T above its delay
    code, stdout, err = run_cli("eval", out, "--data", test, "--limit", 40, "--json", tmp_path / "e.json", "-q")
    assert code == 0, err
    assert [r["T"] for r in json.loads((tmp_path / "e.json").read_text())["snn"]] == \
        [t for t in (8, 16, 32) if t > chosen]
    code, _, err = run_cli(cnn_path, "--data", calib, "--delay", "soon")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--delay" in err and "'soon'" in err, err
    code, _, err = run_cli(cnn_path, "--thresholds", tmp_path / "none.json", "--delay", "auto")
    one_line_error(code, err, "--delay auto", "--data")
    code, _, err = run_cli(cnn_path, "--data", calib, "--delay", "auto", "--delay-samples", 0)
    one_line_error(code, err, "--delay-samples")
    code, _, err = run_cli(cnn_path, "--data", calib, "-T", 16, "--delay", 16)
    one_line_error(code, err, "--delay 16")
