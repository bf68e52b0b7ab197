"""T-aware calibration: snapshots equal shorter calibrations, the closest snapshot is chosen on
samples held back from calibration, and the choice is recorded."""
import json

import numpy as np

from tools.fixtures import graphs
from onnx2snn import CalibConfig, SNNConfig
from onnx2snn import data as D
from onnx2snn.graph.analyse import analyse
from onnx2snn.calibration.balancing import calibrate
from onnx2snn.cli import main
from onnx2snn.fit.tuning import choose_snapshot, snapshot_points


def test_snapshot_points():
    assert snapshot_points(1000) == (125, 250, 500, 1000)
    assert snapshot_points(3) == (1, 3)


def test_snapshots_equal_shorter_calibrations():
    model = analyse(graphs.deep_chain_model(depth=4))
    rng = np.random.default_rng(0)
    batches = [{"input": rng.normal(size=(20, 16)).astype(np.float32)} for _ in range(8)]
    full = calibrate(model, batches, CalibConfig(iters=8), snapshots=(2, 4))
    assert sorted(full.stats["snapshots"]) == [2, 4, 8]
    for k in (2, 4):
        short = calibrate(model, batches[:k], CalibConfig(iters=k))
        snap = full.stats["snapshots"][k]
        assert all(np.array_equal(snap.values[n], short.values[n]) for n in short.values)


def test_held_back_samples_are_not_calibrated_on(tmp_path):
    np.save(tmp_path / "d.npy", np.arange(100 * 16, dtype=np.float32).reshape(100, 16))
    src = D.open_data(str(tmp_path / "d.npy"), None, [D.InputInfo("input", (None, 16), np.dtype(np.float32))],
                      D.Preprocess())
    rest, held = D.split(src, 20, seed=1)
    assert len(rest) == 80 and len(held) == 20
    seen_rest = {int(r[0]) // 16 for r in rest.batch(list(range(80)))[0]["input"]}
    seen_held = {int(r[0]) // 16 for r in held.batch(list(range(20)))[0]["input"]}
    assert not seen_rest & seen_held and len(seen_rest | seen_held) == 100


def test_the_closest_snapshot_is_chosen_and_recorded(tmp_path, capsys):
    model = graphs.deep_chain_model(depth=8, seed=3)
    analysis = analyse(model)
    rng = np.random.default_rng(0)
    batches = [{"input": rng.normal(size=(25, 16)).astype(np.float32)} for _ in range(40)]
    th = calibrate(analysis, batches, CalibConfig(iters=40), snapshots=snapshot_points(40))
    held = [({"input": rng.normal(size=(50, 16)).astype(np.float32)}, None) for _ in range(2)]
    choice = choose_snapshot(analysis, th.stats["snapshots"], SNNConfig(timesteps=8), held)
    assert sorted(choice.errors) == [5, 10, 20, 40]
    assert choice.iters == min(choice.errors, key=choice.errors.get)
    assert len(set(round(e, 6) for e in choice.errors.values())) > 1      # the snapshots differ at T
    import onnx
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "d.npy", rng.normal(size=(300, 16)).astype(np.float32))
    code = main([str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npy"), "-o", str(tmp_path / "s.onnx"),
                 "--iters", "40", "--batch-size", "25", "--tune", "auto", "-T", "8", "--delay", "auto",
                 "--delay-samples", "60", "--check", "0", "--save-thresholds", str(tmp_path / "t.json")])
    assert code == 0, capsys.readouterr().err
    assert "calibration length chosen for T=8" in capsys.readouterr().out
    info = json.loads((tmp_path / "t.json").read_text())["info"]
    assert info["tune"]["iters"] == info["iters"] and info["held_back"] == 60
    assert set(info["tune"]["rel_error"]) == {"5", "10", "20", "40"}
