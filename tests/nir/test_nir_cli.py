"""The NIR files from the command line: convert --nir, export-nir (host parts beside the .nir),
run-nir (same data options and outputs as run), inspect --nir, and their refusals."""
import json

import numpy as np
import onnx
import pytest

from tools.fixtures import graphs
from onnx2snn.cli import main

nir = pytest.importorskip("nir", reason="the NIR export needs the optional `nir` package (pip install nir==1.0.8)")
from tools.fixtures import nir_graphs  # noqa: E402
from tools.fixtures.nir_graphs import sample_input, power_of_two_thresholds, residual_block  # noqa: E402


def _files(tmp_path, model, name, seed=3):
    onnx.save(model, tmp_path / f"{name}.onnx")
    power_of_two_thresholds(model, seed=seed).save(tmp_path / f"{name}_th.json")
    np.save(tmp_path / f"{name}_x.npy", sample_input(model, 10))
    return [str(tmp_path / f"{name}{s}") for s in (".onnx", "_th.json", "_x.npy")]


@pytest.mark.parametrize("make,coding,pre", [(residual_block, "direct", False),
                                             (lambda: graphs.stem_pool_model(integer=True), "current", True)])
def test_convert_nir_export_nir_and_run_nir_give_the_snns_outputs_bit_for_bit(make, coding, pre, tmp_path, capsys):
    model, th, x = _files(tmp_path, make(), "m")
    snn, out = str(tmp_path / "m.snn.onnx"), tmp_path / "at_convert.nir"
    assert main([model, "--thresholds", th, "-T", "18", "--delay", "2", "-o", snn, "--nir", str(out), "-q"]) == 0
    assert main(["export-nir", snn, "-o", str(tmp_path / "exported.nir")]) == 0
    text = capsys.readouterr().out
    assert "T=18, D=2" in text and ("direct coding" if coding == "direct" else "exported.pre.onnx computes it") in text
    assert "after the readout, on the host (exported.head.onnx): gap, flatten, fc" in text
    for name in ("at_convert", "exported"):
        graph = nir.read(str(tmp_path / f"{name}.nir"))
        assert graph.metadata["input_coding"] == coding
        assert (tmp_path / f"{name}.pre.onnx").exists() == pre and graph.metadata.get("host_pre") == \
            (f"{name}.pre.onnx" if pre else None)
        assert graph.metadata["host_head"] == f"{name}.head.onnx"
    assert main(["run", snn, "--data", x, "-o", str(tmp_path / "ort.npz")]) == 0
    for name in ("at_convert", "exported"):
        assert main(["run-nir", str(tmp_path / f"{name}.nir"), "--data", x, "-o", str(tmp_path / f"{name}.npz")]) == 0
        got, want = np.load(tmp_path / f"{name}.npz"), np.load(tmp_path / "ort.npz")
        assert list(got) == list(want) == ["out"] and np.array_equal(got["out"], want["out"])
    # T and D from the metadata unless given: T=10 differs from the model's own run
    assert main(["run-nir", str(out), "--data", x, "-o", str(tmp_path / "t10.npy"), "-T", "10", "-D", "0"]) == 0
    assert not np.array_equal(np.load(tmp_path / "t10.npy"), np.load(tmp_path / "ort.npz")["out"])


def test_a_trained_cnn_through_nir_keeps_its_top1(resnet_path, digits_npz, tmp_path):
    """The digits residual CNN (no MaxPool), calibrated: run-nir's top-1 equals the SNN's on >= 99%
    of the test images (float weights fold with rounding: a rare spike a step apart)."""
    snn, out = str(tmp_path / "r.snn.onnx"), str(tmp_path / "r.nir")
    assert main([str(resnet_path), "--data", str(digits_npz[0]), "-T", "32", "--iters", "30", "--check", "0",
                 "-o", snn, "--nir", out, "-q"]) == 0
    assert main(["run", snn, "--data", str(digits_npz[1]), "-o", str(tmp_path / "ort.npy")]) == 0
    assert main(["run-nir", out, "--data", str(digits_npz[1]), "-o", str(tmp_path / "nir.npy")]) == 0
    got, want = np.load(tmp_path / "nir.npy"), np.load(tmp_path / "ort.npy")
    assert got.shape == want.shape == (len(np.load(digits_npz[1])["y"]), 10)
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99


def test_portable_or_looped_conversions_export_their_unrolled_twin(tmp_path):
    model, th, x = _files(tmp_path, residual_block(), "m")
    for extra in (["--portable"], ["--form", "loop", "--chunk", "3"]):
        snn, out = str(tmp_path / "p.snn.onnx"), str(tmp_path / "p.nir")
        assert main([model, "--thresholds", th, "-T", "18", "--delay", "2", "-o", snn, "--nir", out, "-q"] + extra) == 0
        assert main(["run", snn, "--data", x, "-o", str(tmp_path / "ort.npy")]) == 0
        assert main(["run-nir", out, "--data", x, "-o", str(tmp_path / "nir.npy")]) == 0
        assert np.array_equal(np.load(tmp_path / "ort.npy"), np.load(tmp_path / "nir.npy")), extra


def test_inspect_nir_says_before_calibration_what_nir_cannot_express(tmp_path, capsys):
    onnx.save(graphs.spiking_pool_model(), tmp_path / "pool.onnx")
    onnx.save(graphs.stem_pool_model(), tmp_path / "stem.onnx")
    assert main(["inspect", str(tmp_path / "pool.onnx")]) == 0           # converts ...
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "pool.onnx"), "--nir"]) == 1   # ... but NIR has no max pool
    assert "NIR export (export-nir): no: SpikingMaxPool 'pool'" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "stem.onnx"), "--nir", "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)["nir"]
    assert verdict["exportable"] and verdict["input_coding"] == "current" and "MaxPool 'pool1'" in verdict["reason"]
    assert [h["node"] for h in verdict["host"] if h["when"] == "after"] == ["gap", "flatten", "fc"]
    # convert --nir refuses before calibrating, and writes nothing
    np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(size=(8, 3, 4, 4)).astype(np.float32))
    assert main([str(tmp_path / "pool.onnx"), "--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.snn.onnx"),
                 "--nir", str(tmp_path / "p.nir"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("onnx2snn: error: --nir ") and "SpikingMaxPool 'pool'" in err and err.count("\n") == 1
    assert not (tmp_path / "p.snn.onnx").exists() and not (tmp_path / "p.nir").exists()


def test_bad_nir_input_and_outputs_get_one_line_errors(tmp_path, capsys):
    model, th, x = _files(tmp_path, residual_block(), "m")
    snn = str(tmp_path / "m.snn.onnx")
    assert main([model, "--thresholds", th, "-T", "8", "-o", snn, "-q"]) == 0
    cases = [
        (["export-nir", snn, "-o", str(tmp_path / "m.h5")], "expected a .nir file name"),
        (["export-nir", model], "not a model converted by onnx2snn"),
        (["run-nir", snn, "--data", x], "not a readable NIR file"),
        ([model, "--thresholds", th, "-o", str(tmp_path / "n.snn.onnx"), "--nir", str(tmp_path / "n.onnx")],
         "--nir"),
    ]
    for argv, words in cases:
        capsys.readouterr()
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("onnx2snn: error: ") and words in err and err.count("\n") == 1, (argv, err)
    # a host part would overwrite the SNN itself (or the conversion's own output): refused before any work
    (tmp_path / "x.pre.onnx").write_bytes(open(snn, "rb").read())
    capsys.readouterr()
    assert main(["export-nir", str(tmp_path / "x.pre.onnx"), "-o", str(tmp_path / "x.nir")]) == 1
    assert "its host part x.pre.onnx" in capsys.readouterr().err and not (tmp_path / "x.nir").exists()
    assert main([model, "--thresholds", th, "-o", str(tmp_path / "y.head.onnx"), "--nir", str(tmp_path / "y.nir")]) == 1
    assert "would overwrite another output" in capsys.readouterr().err and not (tmp_path / "y.head.onnx").exists()
    # a host part missing beside the .nir is named
    assert main(["export-nir", snn, "-o", str(tmp_path / "m.nir")]) == 0
    (tmp_path / "m.head.onnx").unlink()
    capsys.readouterr()
    assert main(["run-nir", str(tmp_path / "m.nir"), "--data", x]) == 1
    assert "m.head.onnx (metadata 'host_head') is not beside it" in capsys.readouterr().err
    # the SNN and the data were never touched
    assert onnx.load(snn).graph.node


def test_target_speck_writes_a_fitting_model_quantised_and_refuses_one_that_does_not(tmp_path, capsys):
    from onnx2snn.nir.speck import load_validator
    if load_validator() is None:
        pytest.skip("--target speck checks the memory with sinabs's validator (pip install --no-deps sinabs)")
    model, th, x = _files(tmp_path, residual_block(seed=1, integer=False), "m")
    snn = str(tmp_path / "m.snn.onnx")
    assert main([model, "--thresholds", th, "-T", "18", "--delay", "2", "-o", snn, "-q"]) == 0
    capsys.readouterr()
    assert main(["export-nir", snn, "-o", str(tmp_path / "speck.nir"), "--target", "speck"]) == 0
    out = capsys.readouterr().out
    assert "Speck check: 2 layer(s) on 9 cores; fits" in out and "quantised for Speck" in out
    graph = nir.read(str(tmp_path / "speck.nir"))
    weights = [n.weight for n in graph.nodes.values() if isinstance(n, (nir.Conv2d, nir.Affine, nir.Linear))]
    assert weights and all(np.array_equal(w, np.round(w)) and np.abs(w).max() <= 127 for w in weights)
    assert json.loads(graph.metadata["speck"])["fits"] is True
    assert main(["run-nir", str(tmp_path / "speck.nir"), "--data", x, "-o", str(tmp_path / "q.npy")]) == 0
    # the option-A shortcut's skip bypasses a weight layer: a reason naming it, and nothing written
    model, th, x = _files(tmp_path, nir_graphs.option_a_shortcut_model(), "a")
    snn = str(tmp_path / "a.snn.onnx")
    assert main([model, "--thresholds", th, "-T", "8", "-o", snn, "-q"]) == 0
    capsys.readouterr()
    assert main(["export-nir", snn, "-o", str(tmp_path / "a.nir"), "--target", "speck"]) == 1
    captured = capsys.readouterr()
    assert "does NOT fit" in captured.out and "PROBLEM" in captured.out
    assert captured.err.startswith("onnx2snn: error: --target speck: does not fit Speck (")
    assert not (tmp_path / "a.nir").exists()


def test_a_scikit_learn_model_with_zipmap_exports_and_runs_through_nir(digits_data, tmp_path, capsys):
    """skl2onnx's defaults (a label output and ZipMap post-processing, ai.onnx.ml ops after the readout):
    the host parts keep the model's ai.onnx.ml opset and the declared sequence type, and run-nir gives
    run's labels."""
    from sklearn.neural_network import MLPClassifier
    from skl2onnx import to_onnx
    x_train, y_train, x_test, _ = digits_data
    flat_train, flat_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    clf = MLPClassifier((64, 32), max_iter=300, random_state=0).fit(flat_train, y_train)
    onnx.save(to_onnx(clf, flat_train[:1]), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "calib.npz", X=flat_train)
    np.savez(tmp_path / "test.npz", X=flat_test)
    snn = str(tmp_path / "mlp.snn.onnx")
    assert main([str(tmp_path / "mlp.onnx"), "--data", str(tmp_path / "calib.npz"), "--correct", "none", "--delay",
                 "0", "--v-init", "0", "-T", "32", "--iters", "50", "-o", snn, "-q"]) == 0
    assert main(["export-nir", snn, "-o", str(tmp_path / "mlp.nir")]) == 0, capsys.readouterr().err
    head = onnx.load(tmp_path / "mlp.head.onnx")
    assert "ai.onnx.ml" in {o.domain for o in head.opset_import} and "ZipMap" in {n.op_type for n in head.graph.node}
    assert head.graph.output[1].type.WhichOneof("value") == "sequence_type"
    assert main(["run", snn, "--data", str(tmp_path / "test.npz"), "-o", str(tmp_path / "ort.npz")]) == 0
    assert main(["run-nir", str(tmp_path / "mlp.nir"), "--data", str(tmp_path / "test.npz"),
                 "-o", str(tmp_path / "nir.npz")]) == 0
    got, want = np.load(tmp_path / "nir.npz"), np.load(tmp_path / "ort.npz")
    assert list(got) == list(want) == ["output_label"] and len(want["output_label"]) == len(flat_test)
    assert np.mean(got["output_label"] == want["output_label"]) >= 0.99
