"""Post-conversion corrections (bias per channel, initial potential per neuron): stored with the
thresholds, applied the same way in every form and by the C++ op and the NumPy reference, and they
bring a deep SNN's neurons and output closer to its ANN at small T on held-out data."""
import numpy as np
import pytest

from tools.fixtures import graphs
from onnx2snn import CalibConfig, SNNConfig, Thresholds, UserError, runtime, to_snn
from onnx2snn.ops import reference
from onnx2snn.graph.analyse import analyse
from onnx2snn.calibration.balancing import calibrate
from onnx2snn.calibration import probes
from onnx2snn.fit.correction import correct
from onnx2snn.snn import simulate


def _means(sess, names, batches, fixed=None) -> list:
    """Per-channel means over all `batches` (each batch's means weighted by its size)."""
    inputs = {i.name for i in sess.get_inputs()}
    total, n = None, 0
    for feeds in batches:
        size = len(next(iter(feeds.values())))
        values = runtime.run_checked(sess, names, {**{k: v for k, v in feeds.items() if k in inputs}, **(fixed or {})},
                                     "test")
        weighted = [v.astype(np.float64) * size for v in values]
        total = weighted if total is None else [a + b for a, b in zip(total, weighted)]
        n += size
    return [t / n for t in total]


def _clipped_means(analysis, thresholds: Thresholds, layers, axes: dict, batches) -> dict:
    """Mean of the ANN's clipped activation over `axes[layer]` for each layer's tensor."""
    model, fixed = probes.clipped(analysis, thresholds.values, sorted({l.tensor for l in layers}))
    model, names = simulate.with_means(model, {l.tensor: axes[l.name] for l in layers})
    return dict(zip([l.tensor for l in layers], _means(runtime.session(model), names, batches, fixed)))


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_corrections_are_saved_and_loaded_with_the_thresholds(tmp_path, suffix):
    th = Thresholds({"relu1": np.ones(4, np.float32)}, "manual", bias={"relu1": np.array([0.5, -1, 0, 2], np.float32)},
                    potential={"relu1": np.arange(36, dtype=np.float32) / 8})
    th.save(tmp_path / f"t{suffix}")
    back = Thresholds.load(tmp_path / f"t{suffix}")
    assert np.array_equal(back.bias["relu1"], th.bias["relu1"]) and list(back.values) == ["relu1"]
    assert np.array_equal(back.potential["relu1"], th.potential["relu1"])
    bad = Thresholds({"relu1": np.ones(4, np.float32)}, "manual", bias={"relu1": np.array([np.nan] * 4, np.float32)})
    with pytest.raises(UserError, match="bias correction of 'relu1' is not finite"):
        bad.validate("t")


@pytest.mark.parametrize("kind", ["bias", "potential", "both"])
def test_every_form_applies_the_corrections_exactly(kind):
    """Exactly representable model, thresholds, currents and potentials: every form, the C++ op and
    the NumPy reference agree bit for bit (tensor initial potential included)."""
    model = graphs.residual_integer_model()
    acts = analyse(model).activations
    rng = np.random.default_rng(5)
    sample = {"relu1": 4 * 4 * 4, "relu2>pool2": 4 * 2 * 2}           # neurons per sample of each layer
    bias = {a.name: np.resize(np.array([0.5, -0.25, 1.0, 0.0], np.float32), a.channels) for a in acts}
    potential = {name: (rng.integers(-4, 9, size=n) / 4).astype(np.float32) for name, n in sample.items()}
    th = Thresholds({a.name: np.full(a.channels, 2.0, np.float32) for a in acts}, "manual",
                    bias=bias if kind != "potential" else {}, potential=potential if kind != "bias" else {})
    x = np.random.default_rng(0).integers(-3, 6, size=(4, 2, 4, 4)).astype(np.float32)
    base, _ = to_snn(model, th, SNNConfig(timesteps=16))
    want = reference.run(base, {"input": x})[0]
    assert not np.array_equal(want, reference.run(to_snn(model, Thresholds(th.values, "manual"),
                                                         SNNConfig(timesteps=16))[0], {"input": x})[0])
    for kw in (dict(), dict(portable=True), dict(form="loop", chunk=4), dict(form="loop", chunk=4, portable=True),
               dict(form="loop", portable=True), dict(form="loop", chunk=32, portable=True)):
        got = runtime.session(to_snn(model, th, SNNConfig(timesteps=16, **kw))[0]).run(None, {"input": x})[0]
        assert np.array_equal(got, want), kw


@pytest.mark.parametrize("kind", ["bias", "potential"])
def test_correction_brings_a_deep_snn_closer_to_its_ann(kind):
    model = graphs.deep_chain_model(depth=10, features=16, seed=2)
    rng = np.random.default_rng(0)
    calib = [{"input": rng.normal(size=(50, 16)).astype(np.float32)} for _ in range(4)]
    test = rng.normal(size=(400, 16)).astype(np.float32)
    analysis = analyse(model)
    th = calibrate(analysis, calib * 25, CalibConfig(iters=100))
    cfg = SNNConfig(timesteps=16)
    corrected = correct(analysis, th, cfg, calib, kind)
    table = corrected.bias if kind == "bias" else corrected.potential
    assert set(table) == {a.name for a in analysis.activations}
    assert corrected.info["correction"]["kind"] == kind and corrected.info["correction"]["samples"] == 200
    ann = runtime.session(model).run(None, {"input": test})[0]
    _, layers = to_snn(analysis, th, cfg)
    held = [{"input": test}]
    ann_means = _clipped_means(analysis, th, layers, {l.name: [0] for l in layers}, held)
    err, diff = {}, {}
    for name, t in (("plain", th), ("corrected", corrected)):
        snn, _ = to_snn(analysis, t, cfg)
        out = runtime.session(snn).run(None, {"input": test})[0]
        err[name] = np.linalg.norm(out - ann) / np.linalg.norm(ann)
        stats, names = simulate.with_means(snn, {l.tensor: [0] for l in layers})
        means = _means(runtime.session(stats), names, held)
        diff[name] = np.mean([np.abs(ann_means[l.tensor] - m).mean() for l, m in zip(layers, means)])
    # held-out samples: each neuron's mean output is much closer to the ANN's, and so is the output
    assert diff["corrected"] < 0.6 * diff["plain"], diff
    assert err["corrected"] < err["plain"], err


def test_window_means_average_only_the_readout_steps():
    """with_means over a window: a [T*N, C] time-folded tensor averaged over steps first..T-1 only."""
    from onnx import TensorProto, helper
    t, n, c, first = 6, 3, 4, 2
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [t * n, c])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [t * n, c])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).normal(size=(t * n, c)).astype(np.float32)
    y = np.maximum(x, 0).reshape(t, n, c)
    for axes, want in (([0], y[first:].mean(axis=(0, 1))), ([1], y[first:].mean(axis=(0, 2)))):
        stats, names = simulate.with_means(model, {"y": axes}, (t, first))
        got, = runtime.session(stats).run(names, {"x": x})
        assert np.allclose(got, want, atol=1e-6), axes
    stats, names = simulate.with_means(model, {"y": [0]})
    assert np.allclose(runtime.session(stats).run(names, {"x": x})[0], y.mean(axis=(0, 1)), atol=1e-6)


def _chain_files(tmp_path):
    import onnx
    model = graphs.deep_chain_model(depth=8, features=16, seed=2)
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.normal(size=(300, 16)).astype(np.float32))
    return path, tmp_path / "calib.npy", rng.normal(size=(400, 16)).astype(np.float32)


def test_default_conversion_corrects_both_and_the_thresholds_reproduce_it_without_data(tmp_path):
    """Defaults with data: potential correction, then the delay, then bias over the readout window,
    all recorded; the saved thresholds rebuild the same SNN without data; `--correct none` drops them."""
    import onnx2snn
    from onnx2snn import api
    path, calib, test = _chain_files(tmp_path)
    res = onnx2snn.convert(path, data=str(calib), output=tmp_path / "a.snn.onnx", calib=CalibConfig(iters=60),
                           save_thresholds=tmp_path / "th.json")
    fix = res.thresholds.info["correction"]
    assert fix["kind"] == "both" and fix["timesteps"] == 64 and res.delay is not None
    assert [s["kind"] for s in fix["steps"]] == ["potential", "bias"]
    assert fix["steps"][1]["first_step"] > 0 and fix["delay"] == res.delay.delay
    # each correction and the delay choice after it share one simulation, on the correction's samples
    assert res.thresholds.bias and res.thresholds.potential and set(res.step_seconds) == {"correction"}
    assert res.delay.samples == fix["samples"] and res.batches["correction"] == fix["samples"]
    again = onnx2snn.convert(path, output=tmp_path / "b.snn.onnx", thresholds=tmp_path / "th.json")
    assert again.thresholds.info["correction"]["kind"] == "both"
    x = {"input": test[:50]}
    a = runtime.session(tmp_path / "a.snn.onnx").run(None, x)[0]
    assert np.array_equal(a, runtime.session(tmp_path / "b.snn.onnx").run(None, x)[0])
    plain = onnx2snn.convert(path, output=tmp_path / "c.snn.onnx", thresholds=tmp_path / "th.json",
                             snn=SNNConfig(timesteps=64, delay=res.delay.delay, correct="none"))
    assert not plain.thresholds.bias and not plain.thresholds.potential and "correction" not in plain.thresholds.info
    assert api.data_defaults(False, tmp_path / "th.json", 32) == {"delay": 0, "correct": "none"}   # made for T=64
    with pytest.raises(UserError, match="correct potential: needs data"):
        onnx2snn.convert(path, output=tmp_path / "d.snn.onnx", thresholds=tmp_path / "th.json",
                         snn=SNNConfig(timesteps=64, correct="potential"))


def _graph_bytes(path) -> bytes:
    import onnx
    return onnx.load(path).graph.SerializeToString()


@pytest.mark.parametrize("per_batch", [16, 64, 300])
def test_a_replay_from_the_saved_thresholds_is_the_same_snn_bit_for_bit(per_batch, tmp_path):
    """Defaults with data (both corrections, the delay chosen), the correction's 300 samples split into
    batches by the memory budget (16: no rider; 64: the potential's rider sets the bias window; 300: one
    batch, every choice rides): converting again from the saved thresholds, with the same data and T,
    chooses the same delay and writes the same graph, in the unrolled and the looped form; the delay
    written is the best on the network written."""
    import onnx2snn
    from onnx2snn.data.plan import BatchPlan
    from onnx2snn.graph.costs import largest_activation
    from onnx2snn.runtime import memory as mem
    path, calib, test = _chain_files(tmp_path)
    model = analyse(str(path)).model
    per_sample = mem.simulation_sample_bytes(largest_activation(model), 64, mem.CORRECTION_COPIES)
    budget = mem.MemoryBudget(int(per_sample * per_batch), "test")
    assert BatchPlan(model, budget).correction(64, 300) == per_batch
    kw = dict(data=str(calib), calib=CalibConfig(iters=40), max_memory=budget, check_samples=0,
              correct_samples=300, delay_samples=300)
    first = onnx2snn.convert(path, output=tmp_path / "a.snn.onnx", save_thresholds=tmp_path / "th.json", **kw)
    assert first.thresholds.info["correction"]["kind"] == "both" and first.delay is not None
    x = {"input": test[:64]}
    want = runtime.session(tmp_path / "a.snn.onnx").run(None, x)[0]
    for form, name in (("unrolled", "b"), ("loop", "c")):
        replay = onnx2snn.convert(path, output=tmp_path / f"{name}.snn.onnx", thresholds=tmp_path / "th.json",
                                  snn=SNNConfig(timesteps=64, delay="auto", correct="both", form=form), **kw)
        assert replay.delay.delay == first.delay.delay, (form, replay.delay.to_json(), first.delay.to_json())
        # the same scores up to the order of float64 sums over batches of another size
        assert replay.delay.rel_error == pytest.approx(first.delay.rel_error, rel=1e-12, abs=0), form
        assert np.array_equal(runtime.session(tmp_path / f"{name}.snn.onnx").run(None, x)[0], want), form
    assert _graph_bytes(tmp_path / "b.snn.onnx") == _graph_bytes(tmp_path / "a.snn.onnx")
    # the replay scored the network written: the same scores, so the delay recorded is its best
    rel = first.delay.rel_error
    assert first.delay.delay == min(rel, key=lambda d: (rel[d], d))


def test_both_corrections_beat_potential_alone_and_none_on_held_out_data(tmp_path):
    """On a deep chain at T=16 with a delayed readout, potential + bias (over the readout window)
    brings the output closer to the ANN on held-out samples than the potential correction alone,
    which beats no correction."""
    import onnx2snn
    path, calib, test = _chain_files(tmp_path)
    ann = runtime.session(path).run(None, {"input": test})[0]
    th = calibrate(analyse(onnx2snn.graph.onnx_io.load(path)), [{"input": np.load(calib)[:100]}] * 60, CalibConfig(iters=60))
    err = {}
    for kind in ("none", "potential", "both"):
        res = onnx2snn.convert(path, data=str(calib), write=False, thresholds=th,
                               snn=SNNConfig(timesteps=16, delay="auto", correct=kind))
        out = runtime.session(res.snn).run(None, {"input": test})[0]
        err[kind] = np.linalg.norm(out - ann) / np.linalg.norm(ann)
    assert err["both"] < err["potential"] < err["none"], err


def _layer_by_layer(analysis, th, cfg, batches, kind, first_step=0):
    """The reference: one simulation per layer, each measured with the earlier layers corrected
    over all of `batches` (what the one-pass correction must reproduce when it holds every sample
    in one batch)."""
    from dataclasses import replace
    from onnx2snn.snn.timefold import theta_broadcast
    probe = replace(cfg, delay=0, correct="none")
    _, layers = to_snn(analysis, Thresholds(th.values, th.method), probe)
    act = {a.name: a for a in analysis.activations}
    axes = {l.name: simulate.channel_axes(act[l.source].axis, act[l.source].rank) if kind == "bias" else [0]
            for l in layers}
    ann = _clipped_means(analysis, th, layers, axes, batches)
    out = Thresholds(dict(th.values), th.method, bias=dict(th.bias), potential=dict(th.potential))
    for layer in layers:
        snn, _ = to_snn(analysis, out, probe)
        model, names = simulate.with_means(snn, {layer.tensor: axes[layer.name]},
                                           (cfg.timesteps, first_step) if first_step else None)
        diff = ann[layer.tensor] - _means(runtime.session(model), names, batches)[0]
        if kind == "bias":
            out.bias[layer.name] = (out.bias.get(layer.name, 0) + diff).astype(np.float32)
        else:
            start = out.potential.get(layer.name)
            if start is None:
                a = act[layer.source]
                start = np.broadcast_to(theta_broadcast(layer.theta, a.axis, a.rank), diff.shape) * np.float32(0.5)
            out.potential[layer.name] = (start.reshape(-1) + cfg.timesteps * diff.reshape(-1)).astype(np.float32)
    return out


@pytest.mark.parametrize("kind,first_step", [("potential", 0), ("bias", 0), ("bias", 5)])
@pytest.mark.parametrize("make", [lambda: graphs.deep_chain_model(depth=6, features=12, seed=4),
                                  lambda: graphs.residual_integer_model(channels=6)])
def test_one_pass_correction_equals_layer_by_layer_correction_on_one_batch(make, kind, first_step):
    model = make()
    analysis = analyse(model)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    rng = np.random.default_rng(1)
    batch = [{"input": rng.normal(size=[40] + shape).astype(np.float32)}]
    th = calibrate(analysis, batch * 20, CalibConfig(iters=20))
    cfg = SNNConfig(timesteps=16)
    if kind == "bias":       # on top of a potential correction, as the defaults run it
        th = correct(analysis, th, cfg, batch, "potential")
    want = _layer_by_layer(analysis, th, cfg, batch, kind, first_step)
    got = correct(analysis, th, cfg, batch, kind, first_step=first_step)
    table = (lambda t: t.bias) if kind == "bias" else (lambda t: t.potential)
    assert set(table(got)) == set(table(want)) and table(want)
    for name in table(want):
        np.testing.assert_allclose(table(got)[name], table(want)[name], rtol=1e-4, atol=1e-4, err_msg=name)
        assert np.abs(table(got)[name] - table(th).get(name, 0)).max() > 1e-3       # a correction was made


def test_the_delay_chosen_beside_a_correction_is_the_delay_of_the_corrected_network():
    """One simulation measures the correction and scores the delays of the network it corrects in
    the graph: the same scores as a separate delay choice on the corrected thresholds."""
    from onnx2snn.fit.correction import Corrector
    from onnx2snn.fit.delay import choose_delay
    model = graphs.deep_chain_model(depth=6, features=12, seed=4)
    analysis = analyse(model)
    rng = np.random.default_rng(3)
    batch = [{"input": rng.normal(size=(60, 12)).astype(np.float32)}]
    th = calibrate(analysis, batch * 20, CalibConfig(iters=20))
    cfg = SNNConfig(timesteps=32)
    for kind, first in (("potential", 0), ("bias", 6)):
        rider = Corrector(analysis, th, cfg, kind, first)
        beside = choose_delay(analysis, th, cfg, [(f, None) for f in batch], rider=rider)
        th = rider.result()
        alone = choose_delay(analysis, th, cfg, [(f, None) for f in batch])
        assert beside.delay == alone.delay, kind
        for d in alone.rel_error:
            assert beside.rel_error[d] == pytest.approx(alone.rel_error[d], rel=2e-2, abs=1e-4), (kind, d)
        assert alone.rel_error[alone.delay] < alone.rel_error[0] or alone.delay == 0


@pytest.mark.parametrize("kind", ["potential", "bias"])
def test_correction_graph_runs_bit_identically_in_the_sessions_rewritten_graph(kind):
    """The correction graph's neurons with a computed initial potential or bias (after a spiking max
    pool too, where the potential has the pooled shape) take onnxruntime's blocked layout in
    sessions (the potential reordered in the graph): same outputs as the graph as written."""
    from onnx import helper
    from onnx2snn.fit.correction import ANN_MEAN, Corrector, _correction_graph
    from onnx2snn.runtime import layout
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p2", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["out"], name="flatten")]
    model = graphs.make(nodes, {f"w{i}": rng.normal(size=(16, 16, 3, 3)) / 6 for i in (1, 2, 3)},
                        ["N", 16, 4, 4], out_shape=["N", 16])
    analysis = analyse(model)
    x = rng.normal(size=(6, 16, 4, 4)).astype(np.float32)
    th = calibrate(analysis, [{"input": x}] * 10, CalibConfig(iters=10))
    rider = Corrector(analysis, th, SNNConfig(timesteps=16), kind, 3 if kind == "bias" else 0)
    graph, outs = _correction_graph(rider.snn, rider.layers, rider.act_of, rider.axes, kind, 16, rider.first_step, 0.5)
    feeds = dict(rider.feeds({"input": x}), input=x)
    want = runtime.session(graph, rewrite=False).run(outs, feeds)
    fast = runtime.session(graph)
    got = fast.run(outs, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(got, want)) and any(np.abs(w).max() > 0 for w in want)
    assert set(feeds) >= {ANN_MEAN + l.name for l in rider.layers}
    if layout.block_size():       # the corrected neurons run blocked
        rewritten, _ = runtime.session_graph(graph)
        blocked = [n.name for n in rewritten.graph.node if n.op_type == "IFNeuron"
                   and any(a.name == "channel_block" for a in n.attribute)]
        assert "relu2>pool2/corrected" in blocked, blocked     # relu1 reads the tiled time-invariant input
