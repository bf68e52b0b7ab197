"""--max-memory: sizes, the default budget, and batch sizes chosen to fit (printed by the CLI)."""
import numpy as np
import onnx
import pytest

import graphs
from onnx2snn import UserError
from onnx2snn.cli import main
from onnx2snn.runtime import memory as mem


def test_sizes_parse_in_binary_units_and_bad_ones_name_the_flag():
    assert mem.parse_size("8G") == 8 * 2 ** 30 and mem.parse_size("512M") == 512 * 2 ** 20
    assert mem.parse_size("1.5GiB") == int(1.5 * 2 ** 30) and mem.parse_size("2000000") == 2000000
    for bad in ("lots", "8Q", "-1G", "10K"):
        with pytest.raises(UserError, match="--max-memory"):
            mem.parse_size(bad)


def test_default_budget_is_half_of_what_is_available():
    b = mem.budget()
    assert 0 < b.bytes <= mem.available_bytes() and "available" in b.source
    assert mem.budget("2G") == mem.MemoryBudget(2 * 2 ** 30, "--max-memory")
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
