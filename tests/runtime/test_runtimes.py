"""Portable SNNs on other runtimes: OpenVINO and tract (PyPI, the `runtimes` extra) and
onnxruntime-node / onnxruntime-web (npm, tests/runtime/js), against onnxruntime's outputs.

Two models: one whose every sum is exactly representable (integer weights and inputs, power-of-two
thresholds, 16 averaged steps), on which every runtime must give identical outputs whatever its
convolution kernels; and a trained digits CNN, where runtimes' float rounding may flip a spike that
sits exactly at threshold, so the bound is the one such flips allow: the same top-1 on >= 99% of
the images and a mean relative difference <= 1e-2.
"""
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from tools.fixtures import graphs
from onnx2snn import CalibConfig, SNNConfig, runtime, to_snn
from onnx2snn.graph.analyse import analyse

JS = Path(__file__).resolve().parent / "js"
# the forms each runtime implements (docs/guide/deploying.md)
FORMS = {
    "unrolled": dict(),                                   # the --portable default: steps written out
    "unrolled-scan": dict(portable_steps="scan"),
    "loop": dict(form="loop"),
    "loop-chunk4": dict(form="loop", chunk=4),
    "loop-scan": dict(form="loop", loop_op="scan"),
}
# the default portable form with the other neurons, exact model only: signed (a second state, its net
# count; 16 negative spikes on the test input) and burst (repeated firing rounds)
NEURON_FORMS = {"unrolled-signed": dict(signed=True), "unrolled-burst": dict(spikes="burst:2")}
SUPPORTED = {
    "openvino": ["unrolled", "unrolled-scan", "loop", "loop-chunk4"],
    "tract": ["unrolled", "loop-scan"],
    "onnxruntime-node": list(FORMS),
    "onnxruntime-web": list(FORMS),
}


def _python_runtime(name):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (the onnx2snn[runtimes] extra)")


def _js_runtime(name):
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (JS / "node_modules" / name).exists():
        pytest.skip(f"{name} is not installed (cd tests/runtime/js && npm install --ignore-scripts)")


def _tract_fixed(path: Path, x: np.ndarray) -> np.ndarray:
    """tract with the input's shape fixed to x's, as tract's own examples load models."""
    import tract
    model = tract.onnx().load(str(path))
    model.set_input_fact(0, ",".join(map(str, x.shape)) + ",f32")
    return model.into_model().into_runnable().run([x])[0].to_numpy()


def _run(name, path: Path, x: np.ndarray, tmp_path: Path, repeats: int = 1):
    """(outputs of `name` for input x, best milliseconds per run)."""
    if name.startswith("onnxruntime-"):
        inp, out = tmp_path / "x.f32", tmp_path / "y.f32"
        x.astype("<f4").tofile(inp)
        proc = subprocess.run(["node", str(JS / "run.mjs"), name.split("-")[1], str(path), "input", str(inp),
                               json.dumps(list(x.shape)), "logits", str(out), str(repeats)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        meta = json.loads(proc.stdout.strip().splitlines()[-1])
        return np.fromfile(out, "<f4").reshape(meta["dims"]), meta["ms"]
    import time
    run = runtime.backend(name, path)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        y = run({"input": x})["logits"]
        best = min(best, (time.perf_counter() - start) * 1e3)
    return np.asarray(y), best


@pytest.mark.parametrize("name", list(SUPPORTED))
def test_exact_model_gives_identical_outputs_on_every_runtime(name, tmp_path):
    (_python_runtime if not name.startswith("onnxruntime-") else _js_runtime)(name)
    model, th, x = graphs.exact_runtime_model()
    for form in SUPPORTED[name] + list(NEURON_FORMS):
        snn, _ = to_snn(model, th, SNNConfig(timesteps=16, portable=True, **{**FORMS, **NEURON_FORMS}[form]))
        path = tmp_path / f"{form}.onnx"
        onnx.save(snn, path)
        want = runtime.session(snn).run(None, {"input": x})[0]
        assert np.any(want != 0)
        got, _ = _run(name, path, x, tmp_path)
        assert np.array_equal(got, want), (name, form, np.abs(got - want).max())


def _trained_agrees(name, model_path, calib, x, forms, timesteps, tmp_path, min_agree, max_rel):
    """Calibrate `model_path`, then each portable form on runtime `name` against onnxruntime: the
    same top-1 on at least `min_agree` of `x` and a mean relative difference of at most `max_rel`."""
    (_python_runtime if not name.startswith("onnxruntime-") else _js_runtime)(name)
    from onnx2snn import api
    ann = analyse(onnx.load(model_path))
    th = api.calibrate(ann, api.open_source(ann.model, str(calib)), CalibConfig(iters=30))
    for form in forms:
        snn, _ = to_snn(ann, th, SNNConfig(timesteps=timesteps, portable=True, **{**FORMS, **NEURON_FORMS}[form]))
        path = tmp_path / f"{form}.onnx"
        onnx.save(snn, path)
        want = runtime.session(snn).run(None, {"input": x})[0]
        got, _ = _run(name, path, x, tmp_path)
        agree = np.mean(got.argmax(1) == want.argmax(1))
        rel = np.abs(got - want).mean() / np.abs(want).mean()
        assert agree >= min_agree and rel <= max_rel, (name, form, agree, rel)


@pytest.mark.parametrize("name", list(SUPPORTED))
def test_trained_model_agrees_on_every_runtime(name, cnn_path, digits_npz, tmp_path):
    x = np.load(digits_npz[1])["input"][:200]
    _trained_agrees(name, cnn_path, digits_npz[0], x, SUPPORTED[name], 32, tmp_path, 0.99, 1e-2)


def test_run_on_another_runtime_from_the_cli(tmp_path, capsys):
    _python_runtime("openvino")
    from onnx2snn.cli import main
    model, th, x = graphs.exact_runtime_model()
    onnx.save(model, tmp_path / "m.onnx")
    th.save(tmp_path / "th.json")
    np.save(tmp_path / "x.npy", x)
    assert main([str(tmp_path / "m.onnx"), "--thresholds", str(tmp_path / "th.json"), "-o", str(tmp_path / "p.onnx"),
                 "-T", "16", "--portable", "-q"]) == 0
    assert main(["run", str(tmp_path / "p.onnx"), "--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "ov.npy"),
                 "--runtime", "openvino"]) == 0
    assert main(["run", str(tmp_path / "p.onnx"), "--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "ort.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "ov.npy"), np.load(tmp_path / "ort.npy"))
    # a custom-op model cannot run elsewhere: one line that says what to do
    assert main([str(tmp_path / "m.onnx"), "--thresholds", str(tmp_path / "th.json"), "-o", str(tmp_path / "c.onnx"),
                 "-T", "16", "-q"]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "c.onnx"), "--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o.npy"),
                 "--runtime", "openvino"]) == 1
    assert "convert with --portable" in capsys.readouterr().err


def test_default_portable_form_runs_on_every_runtime_with_fixed_and_symbolic_batch(pool_resnet_path, digits_npz,
                                                                                    tmp_path):
    """The --portable default (unrolled, each neuron's steps written out) on a trained model with
    spiking max pools and a residual block: onnxruntime, OpenVINO, tract with a symbolic and with a
    fixed batch, onnxruntime-node and -web give the same top-1 on >= 15 of 16 images."""
    from onnx2snn import api
    ann = analyse(onnx.load(pool_resnet_path))
    th = api.calibrate(ann, api.open_source(ann.model, str(digits_npz[0])), CalibConfig(iters=30))
    snn, _ = to_snn(ann, th, SNNConfig(timesteps=32, portable=True))
    assert {n.op_type for n in snn.graph.node}.isdisjoint({"Scan", "Loop", "IFNeuron", "SpikingMaxPool"})
    path = tmp_path / "portable.onnx"
    onnx.save(snn, path)
    x = np.load(digits_npz[1])["input"][:16]
    want = runtime.session(snn).run(None, {"input": x})[0].argmax(1)
    ran = {}
    for name in SUPPORTED:
        present = (shutil.which("node") is not None and (JS / "node_modules" / name).exists()
                   if name.startswith("onnxruntime-") else importlib.util.find_spec(name) is not None)
        if present:
            ran[name] = _run(name, path, x, tmp_path)[0].argmax(1)
    if importlib.util.find_spec("tract") is not None:
        ran["tract, fixed batch"] = _tract_fixed(path, x).argmax(1)
    if not ran:
        pytest.skip("no runtime besides onnxruntime is installed (the onnx2snn[runtimes] extra, tests/runtime/js)")
    for name, top1 in ran.items():
        assert np.sum(top1 == want) >= 15, (name, top1, want)


@pytest.mark.parametrize("name", list(SUPPORTED))
def test_compensated_model_agrees_on_every_runtime(name, silu_se_path, digits_npz, tmp_path):
    """A network without ReLU (SiLU, squeeze-and-excitation gates): its expectation compensation is
    standard ops (CumSum, Range, Mul, Sub), which every runtime runs in every form it supports, binary
    and burst neurons alike."""
    x = np.load(digits_npz[1])["input"][:100]
    _trained_agrees(name, silu_se_path, digits_npz[0], x, SUPPORTED[name] + ["unrolled-burst"], 16, tmp_path,
                    0.98, 2e-2)
