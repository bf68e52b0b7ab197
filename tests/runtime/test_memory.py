"""--max-memory: sizes, the default budget, and batch sizes chosen to fit (printed by the CLI)."""
import numpy as np
import onnx
import pytest

from tools.fixtures import graphs
from onnx2snn import UserError, api
from onnx2snn.errors import param
from onnx2snn.evaluate import evaluation as ev
from onnx2snn.graph.analyse import as_analysis
from onnx2snn.cli import main
from onnx2snn.config import SNNConfig
from onnx2snn.fit.delay import choose_delay
from onnx2snn.runtime import memory as mem
from onnx2snn.snn.info import SNNInfo
from onnx2snn.calibration.thresholds import Thresholds


def test_sizes_parse_in_binary_units_and_bad_ones_name_the_flag():
    assert mem.parse_size("8G") == 8 * 2 ** 30 and mem.parse_size("512M") == 512 * 2 ** 20
    assert mem.parse_size("1.5GiB") == int(1.5 * 2 ** 30) and mem.parse_size("2000000") == 2000000
    for bad in ("lots", "8Q", "-1G", "10K"):
        with pytest.raises(UserError, match="max_memory"):
            mem.parse_size(bad)


def test_default_budget_is_half_of_what_is_available():
    b = mem.budget()
    assert 0 < b.bytes <= mem.available_bytes() and "available" in b.source
    assert mem.budget("2G") == mem.MemoryBudget(2 * 2 ** 30, param("max_memory"))
    assert b.samples(b.bytes / 3.5, 100) == 3 and b.samples(b.bytes * 10, 100) == 1 and b.samples(1, 64) == 64


def test_batches_shrink_to_fit_the_budget_and_are_printed(tmp_path, capsys):
    model = graphs.deep_chain_model(depth=3, features=1024, classes=5)      # largest activation: 1024 floats
    onnx.save(model, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", input=rng.normal(size=(120, 1024)).astype(np.float32))
    args = [str(tmp_path / "m.onnx"), "--data", str(tmp_path / "c.npz"), "-o", str(tmp_path / "o.snn.onnx"),
            "-T", "64", "--iters", "3", "--check", "16"]
    assert main(args + ["--max-memory", "16M"]) == 0
    small = capsys.readouterr().out
    # 16 MiB: correction 16 copies x 64 steps x 4 KiB = 4 MiB per sample -> 4; calibration 100 fits
    assert "memory budget 16 MiB (--max-memory)" in small
    assert "calibration 100, correction 4" in small, small
    assert main(args) == 0
    assert "correction 120" in capsys.readouterr().out         # the default budget holds every sample
    # eval: 12 copies x 64 steps x 4 KiB = 3 MiB per sample -> 2 in 8 MiB
    assert main(["eval", str(tmp_path / "o.snn.onnx"), "--data", str(tmp_path / "c.npz"), "--max-memory", "8M",
                 "-T", "64"]) == 0
    assert "memory budget 8 MiB (--max-memory): 2 samples per simulation batch" in capsys.readouterr().out
    assert main(args + ["--max-memory", "a lot"]) == 1
    assert "--max-memory a lot: expected a size" in capsys.readouterr().err


@pytest.mark.parametrize("fixture", ["cnn_path", "resnet_path"])
def test_a_sample_too_large_for_the_budget_is_simulated_in_slices_of_steps_with_the_same_results(
        fixture, request, digits_npz, tmp_path, capsys):
    ann = request.getfixturevalue(fixture)
    calib, test = digits_npz
    snn_path, th_path = tmp_path / "m.snn.onnx", tmp_path / "th.json"
    assert main([str(ann), "--data", str(calib), "-o", str(snn_path), "-T", "32", "--iters", "3", "-q",
                 "--save-thresholds", str(th_path)]) == 0
    info = SNNInfo.from_metadata(onnx.load(snn_path))
    per_step = mem.simulation_sample_bytes(info.costs["largest_activation"], 1)
    # 8 steps of one sample fit beside the sessions' share (evaluate.slice_steps): T=31 runs as 8+8+8+7
    tight = mem.MemoryBudget(int(per_step * 8 + ev.SLICE_WEIGHT_COPIES * onnx.load(snn_path).ByteSize()), "test")
    ts = [t for t in (8, 16, 24, 28, 31) if t > info.delay]
    whole = api.evaluate_file(snn_path, test, ann_path=ann, timesteps=ts, batch_size=16, limit=64,
                              report_path=tmp_path / "whole.json")
    sliced = api.evaluate_file(snn_path, test, ann_path=ann, timesteps=ts, batch_size=16, limit=64,
                               report_path=tmp_path / "sliced.json", max_memory=tight)
    assert whole.slice_steps is None and sliced.slice_steps == 8
    assert [(r["T"], r["accuracy"], r["agreement"], r["rel_error"], r["sops"]) for r in whole.rows] == \
        [(r["T"], r["accuracy"], r["agreement"], r["rel_error"], r["sops"]) for r in sliced.rows]
    assert whole.rows[-1]["rel_error"] > 0 and whole.rows[-1]["sops"] > 0
    for a, b in zip(whole.layers, sliced.layers):      # summed over slices in float64, over T in float32
        assert (a["firing_rate"], a["silent"], a["saturated"]) == (b["firing_rate"], b["silent"], b["saturated"])
        assert a["rate_error"] == pytest.approx(b["rate_error"], rel=1e-5)
    # the delay choice scores every candidate readout window the same way
    x = np.load(test)["input"][:16]
    config = SNNConfig(timesteps=32)
    found = [choose_delay(as_analysis(str(ann)), Thresholds.load(th_path), config, [({"input": x}, None)],
                          memory=budget) for budget in (None, tight)]
    assert found[0].rel_error == found[1].rel_error and found[0].delay == found[1].delay
    capsys.readouterr()
    assert main(["eval", str(snn_path), "--data", str(test), "--max-memory", str(tight.bytes), "-T", "32"]) == 0
    assert "one sample does not fit at T=32: the unrolled simulation runs 8 steps at a time" in capsys.readouterr().out
