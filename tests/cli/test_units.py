"""Fast unit tests of the parts: analysis, builder, energy formulas, configs, the SNN description,
sessions, and the one-import rule. Hand-built graphs only; no training."""
import dataclasses

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from tools.fixtures import graphs
from onnx2snn import CalibConfig, SNNConfig, Thresholds, UserError, runtime, to_snn
from onnx2snn.graph import costs as energy
from onnx2snn.graph import onnx_io as M
from onnx2snn.graph.analyse import analyse
from onnx2snn.graph.builder import Builder
from onnx2snn.snn.info import Provenance, SNNInfo


# ---- analysis -----------------------------------------------------------------------------------
def _clip_model(as_inputs: bool):
    """Conv -> Clip(0, 6) (attributes at opset 10, inputs at 13+) -> Conv -> Relu -> Flatten."""
    rng = np.random.default_rng(0)
    if as_inputs:
        clip = helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6")
        inits, opset = {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}, 17
    else:
        clip = helper.make_node("Clip", ["c1"], ["r1"], name="relu6", min=0.0, max=6.0)
        inits, opset = {}, 10
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1"), clip,
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["out"], name="flat")]
    inits.update(w1=rng.normal(size=(3, 2, 1, 1)), w2=rng.normal(size=(4, 3, 1, 1)))
    return graphs.make(nodes, inits, ["N", 2, 2, 2], out_shape=["N", 16], opset=opset)


@pytest.mark.parametrize("as_inputs", [False, True])
def test_clip_relu6_is_found_with_its_cap_and_channel_axis(as_inputs):
    a = analyse(_clip_model(as_inputs))
    acts = {x.name: x for x in a.activations}
    assert (acts["relu6"].kind, acts["relu6"].cap, acts["relu6"].axis, acts["relu6"].channels) == ("Clip", 6.0, 1, 3)
    assert (acts["relu2"].kind, acts["relu2"].cap, acts["relu2"].channels) == ("Relu", None, 4)
    assert a.problems == ()


def test_regions_and_problem_reasons():
    a = analyse(graphs.stem_pool_model())
    names = lambda ids: sorted(n.name for n in a.graph.nodes if id(n) in ids)  # noqa: E731
    assert names(a.regions.pre) == ["conv1"]
    assert names(a.regions.spiking) == ["conv2", "pool1"]
    assert names(a.regions.post) == ["fc", "flatten", "gap"]
    middle = analyse(graphs.nonlinear_middle_model())
    assert [(n.name, why) for n, why in middle.problems] == [("squash", "not linear in the spikes")]
    assert [n.name for n in middle.compensated()] == ["squash"] and middle.blocking() == []
    middle.require_convertible()                      # the Sigmoid is compensated
    bad = analyse(graphs.hard_gate_model())
    assert [n.name for n, _ in bad.blocking()] == ["gate"]
    with pytest.raises(UserError, match="Greater 'gate' \\(not linear in the spikes and not a float function"):
        bad.require_convertible()


def test_unnamed_and_duplicate_nodes_get_unique_names():
    model = graphs.stem_pool_model()
    for node in model.graph.node:
        node.name = "" if node.op_type != "Relu" else "same"
    a = analyse(model)
    names = [n.name for n in a.graph.nodes]
    assert len(set(names)) == len(names) and all(names)
    assert len({x.name for x in a.activations}) == 2


def test_analysis_copies_are_independent():
    a = analyse(graphs.stem_pool_model())
    before = [(n.op, n.name) for n in a.graph.nodes]
    to_snn(a, None, SNNConfig(timesteps=4, form="loop", chunk=2, portable=True))
    to_snn(a, None, SNNConfig(timesteps=4))
    assert [(n.op, n.name) for n in a.graph.nodes] == before
    assert [(o.domain, o.version) for o in a.model.opset_import] == [("", 17)]


def test_a_conversion_imports_the_ann_into_graphsurgeon_once(monkeypatch, tmp_path):
    model = graphs.deep_chain_model(depth=3)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "d.npy", np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32))
    calls = []
    real = M.to_graph
    monkeypatch.setattr(M, "to_graph", lambda m: calls.append(1) or real(m))
    import onnx2snn
    onnx2snn.convert(path, data=str(tmp_path / "d.npy"), output=tmp_path / "m.snn.onnx",
                     calib=CalibConfig(iters=3, batch_size=20), snn=SNNConfig(timesteps=8, delay="auto"),
                     check_samples=20, delay_samples=20)
    assert len(calls) == 1


# ---- builder ------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset,as_input", [(13, False), (18, True)])
def test_builder_reduce_uses_the_opsets_axes_form(opset, as_input):
    graph = gs.Graph(inputs=[gs.Variable("x", np.float32, [2, 3])], opset=opset)
    b = Builder(graph, opset, "t")
    out = b.reduce("ReduceMean", graph.inputs[0], [1], keepdims=0)
    out.shape = [2]
    graph.outputs = [out]
    node = graph.nodes[0]
    assert (len(node.inputs) == 2) == as_input and ("axes" in node.attrs) != as_input
    model = gs.export_onnx(graph)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(runtime.session(model).run(None, {"x": x})[0], x.mean(1))
    assert node.name.startswith("t/ReduceMean_")   # named <prefix>/<op>_<k> for Netron


# ---- energy -------------------------------------------------------------------------------------
def test_mac_counts_by_hand():
    nodes = [helper.make_node("Conv", ["input", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1], group=2),
             helper.make_node("ConvTranspose", ["c", "wt"], ["t"], name="deconv", strides=[2, 2]),
             helper.make_node("Flatten", ["t"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wg"], ["g"], name="fc", transB=1),
             helper.make_node("MatMul", ["g", "wm"], ["out"], name="mm")]
    inits = {"wc": np.ones((4, 1, 3, 3)), "wt": np.ones((4, 3, 2, 2)), "wg": np.ones((5, 3 * 8 * 8)),
             "wm": np.ones((5, 7))}
    model = M.infer_shapes(graphs.make(nodes, inits, ["N", 2, 4, 4], out_shape=["N", 7]))
    macs = energy.layer_macs(model)
    assert macs["conv"] == (4 * 4 * 4 * (1 * 3 * 3), 2 * 4 * 4)       # out elems x (C_in/groups x k)
    assert macs["deconv"] == (4 * 4 * 4 * (3 * 2 * 2), 4 * 4 * 4)    # in elems x (C_out/groups x k)
    assert macs["fc"] == (5 * 192, 192) and macs["mm"] == (7 * 5, 5)
    assert energy.totals(model) == sum(m for m, _ in macs.values())
    # one spike on the conv output drives (C_out/groups x k) synaptic operations in the deconv
    assert energy.fanouts(model, ["c"])["c"] == pytest.approx(12.0)


# ---- configs and the SNN description -------------------------------------------------------------
@pytest.mark.parametrize("kwargs,flag", [
    (dict(lr=float("inf")), "lr"), (dict(lr=0), "lr"), (dict(iters=0), "iters"),
    (dict(batch_size=-2), "batch_size"), (dict(percentile=0), "percentile"), (dict(method="x"), "method")])
def test_calib_config_refuses_bad_values(kwargs, flag):
    """The library names the parameter; the command line renders it as its flag."""
    from onnx2snn.cli.options import flag_of
    from onnx2snn.errors import render
    with pytest.raises(UserError, match=rf"^{flag}\b") as err:
        CalibConfig(**kwargs)
    assert "--" not in str(err.value)
    assert render(err.value.template, flag_of).startswith("--" + flag.replace("_", "-") + " ")


@pytest.mark.parametrize("kwargs,flag", [
    (dict(v_init=float("nan")), "v_init"), (dict(timesteps=0), "timesteps"), (dict(delay=64), "delay"),
    (dict(chunk=2), "chunk"), (dict(form="loop", exit_stable=0), "exit_stable"),
    (dict(form="loop", exit_margin=-1.0), "exit_margin"), (dict(exit_min_steps=-1), "exit_min_steps"),
    (dict(early_exit=True), "early_exit")])
def test_snn_config_refuses_bad_values_and_replace_validates_again(kwargs, flag):
    from onnx2snn.cli.options import flag_of
    from onnx2snn.errors import render
    with pytest.raises(UserError, match=rf"^{flag}\b") as err:
        SNNConfig(**kwargs)
    assert "--" not in str(err.value) and render(err.value.template, flag_of).startswith("--")
    with pytest.raises(UserError, match=flag):
        dataclasses.replace(SNNConfig(), **kwargs)


def test_snn_info_round_trips_through_metadata():
    model = graphs.stem_pool_model()
    snn, _ = to_snn(model, None, SNNConfig(timesteps=8, delay=2, form="loop", chunk=4, early_exit=True,
                                           exit_min_steps=4), Provenance('{"mean": [0.5]}', "m.onnx", {"delay": 2}))
    info = SNNInfo.from_metadata(snn)
    assert (info.form, info.timesteps, info.delay, info.chunk) == ("loop", 8, 2, 4)
    assert info.early_exit == {"stable_steps": 32, "margin": 2.0, "min_steps": 4}
    assert info.provenance == Provenance('{"mean": [0.5]}', "m.onnx", {"delay": 2})
    again = onnx.ModelProto()
    M.set_metadata(again, info.to_metadata())
    assert SNNInfo.from_metadata(again) == info
    with pytest.raises(UserError, match="not a model converted by onnx2snn"):
        SNNInfo.from_metadata(model)


@pytest.mark.parametrize("values,why", [({"relu1": [np.nan] * 4, "relu2": [1] * 6}, "non-finite"),
                                        ({"relu1": [-1.0] * 4, "relu2": [1] * 6}, "negative")])
def test_thresholds_must_be_finite_and_non_negative(values, why):
    th = Thresholds({k: np.asarray(v, np.float32) for k, v in values.items()}, "manual")
    with pytest.raises(UserError, match=why):
        th.validate("--thresholds t.json")


# ---- sessions -----------------------------------------------------------------------------------
def test_the_op_library_is_registered_only_when_the_model_uses_it(monkeypatch):
    model = graphs.stem_pool_model()
    portable, _ = to_snn(model, None, SNNConfig(timesteps=4, portable=True))
    custom, _ = to_snn(model, None, SNNConfig(timesteps=4))
    monkeypatch.setenv("ONNX2SNN_OPS_LIBRARY", "/nonexistent/libops.so")   # would fail if looked up
    x = np.ones((1, 2, 6, 6), np.float32)
    assert runtime.session(model).run(None, {"input": x})[0].shape == (1, 5)
    assert runtime.session(portable).run(None, {"input": x})[0].shape == (1, 5)
    with pytest.raises(UserError, match="ONNX2SNN_OPS_LIBRARY"):
        runtime.session(custom)


def test_a_missing_runtime_package_is_named(monkeypatch, tmp_path):
    import importlib
    model = graphs.stem_pool_model()
    portable, _ = to_snn(model, None, SNNConfig(timesteps=4, portable=True))
    onnx.save(portable, tmp_path / "p.onnx")
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: (_ for _ in ()).throw(ImportError(name)) if name in ("openvino", "tract")
                        else real(name, *a))
    for name in ("openvino", "tract"):
        with pytest.raises(UserError, match=rf"runtime_name {name}: the Python package '{name}' is not installed"):
            runtime.backend(name, tmp_path / "p.onnx")
    with pytest.raises(UserError, match="runtime_name cuda"):
        runtime.backend("cuda", tmp_path / "p.onnx")


def test_the_public_names_are_what_they_say_after_every_subpackage_is_imported():
    """A subpackage named like a public function (onnx2snn.calibrate) would replace it once imported."""
    import importlib
    import pkgutil

    import onnx2snn
    for info in pkgutil.walk_packages(onnx2snn.__path__, "onnx2snn."):
        if not info.name.startswith(("onnx2snn.nir", "onnx2snn.cluster")) and not info.name.endswith("__main__") \
                and not info.name.startswith("onnx2snn._"):
            importlib.import_module(info.name)
    for name in onnx2snn.__all__:
        value = getattr(onnx2snn, name)
        assert not isinstance(value, type(onnx2snn)), (name, value)
    assert callable(onnx2snn.calibrate) and callable(onnx2snn.convert)


def test_every_flag_default_has_one_source():
    """The flags that fill a config dataclass (or a sample count the API shares) take their default
    from it: the parser's defaults equal the dataclasses', and no command module writes one as a
    literal (a second source that could drift)."""
    import argparse
    import ast
    import dataclasses
    from pathlib import Path

    from onnx2snn import config
    from onnx2snn.cli import build_parser
    shared = {f.name: f.default for cls in (config.CalibConfig, config.SNNConfig) for f in dataclasses.fields(cls)}
    shared.update(delay_samples=config.DELAY_SAMPLES, correct_samples=config.CORRECT_SAMPLES,
                  freeze_samples=config.FREEZE_SAMPLES, check=config.CHECK_SAMPLES)
    resolved_from_data = {"delay", "correct"}        # None on the command line: data_defaults decides
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    convert = sub.choices["convert"]
    seen = set()
    for action in convert._actions:
        if action.dest in shared and action.dest not in resolved_from_data:
            assert action.default == shared[action.dest], action.dest
            seen.add(action.dest)
    assert {"iters", "lr", "timesteps", "v_init", "delay_samples", "correct_samples", "check"} <= seen
    literal = []
    for path in (Path(config.__file__).parent / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                for kw in node.keywords:
                    if kw.arg == "default" and isinstance(kw.value, ast.Constant) and kw.value.value is not None:
                        flags = [a.value for a in node.args if isinstance(a, ast.Constant)]
                        literal.append((path.name, flags, kw.value.value))
    assert not literal, literal
