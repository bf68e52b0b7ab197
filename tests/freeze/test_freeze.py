"""--freeze-norm: GroupNorm (as torch exports it: Reshape + InstanceNormalization), InstanceNorm,
LayerNorm and GroupNormalization between spiking layers become fixed affines from calibration
statistics; exact when every sample has the same statistics, reported per layer otherwise, and an
FCOS-style head converts end to end."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx2snn import runtime
from onnx2snn.graph.analyse import analyse
from onnx2snn.cli import main
from onnx2snn.freeze import candidates, freeze
from onnx2snn.snn.info import SNNInfo


def _norm_model(kind: str, channels=8, seed=0):
    """Conv -> Relu -> [norm] -> Conv -> Relu -> GAP -> Flatten: the norm sits between spiking layers."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.normal(size=(channels, 3, 3, 3)).astype(np.float32),
             "w2": rng.normal(size=(channels, channels, 3, 3)).astype(np.float32) / 4,
             "scale": rng.uniform(0.5, 1.5, channels).astype(np.float32),
             "bias": rng.normal(size=channels).astype(np.float32) * 0.1}
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    opset = 17
    if kind == "instance":
        nodes.append(helper.make_node("InstanceNormalization", ["r1", "scale", "bias"], ["n"], name="norm",
                                      epsilon=1e-5))
    elif kind == "group_as_torch":     # torch.onnx (TorchScript) GroupNorm: Reshape -> InstanceNorm -> Reshape -> affine
        inits.update({"to_groups": np.array([0, 2, -1], np.int64), "ones": np.ones(2, np.float32),
                      "zeros": np.zeros(2, np.float32), "back": np.array([0, channels, 6, 6], np.int64),
                      "g": inits["scale"].reshape(channels, 1, 1), "b": inits["bias"].reshape(channels, 1, 1)})
        nodes += [helper.make_node("Reshape", ["r1", "to_groups"], ["grouped"], name="gn_reshape"),
                  helper.make_node("InstanceNormalization", ["grouped", "ones", "zeros"], ["normed"], name="norm",
                                   epsilon=1e-5),
                  helper.make_node("Reshape", ["normed", "back"], ["ungrouped"], name="gn_back"),
                  helper.make_node("Mul", ["ungrouped", "g"], ["scaled"], name="gn_scale"),
                  helper.make_node("Add", ["scaled", "b"], ["n"], name="gn_shift")]
    elif kind == "layer":
        inits.update({"ln_scale": rng.uniform(0.5, 1.5, (channels, 6, 6)).astype(np.float32),
                      "ln_bias": rng.normal(size=(channels, 6, 6)).astype(np.float32) * 0.1})
        nodes.append(helper.make_node("LayerNormalization", ["r1", "ln_scale", "ln_bias"], ["n"], name="norm", axis=1))
    elif kind == "group":
        opset = 21
        nodes.append(helper.make_node("GroupNormalization", ["r1", "scale", "bias"], ["n"], name="norm", num_groups=4))
    nodes += [helper.make_node("Conv", ["n", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
              helper.make_node("GlobalAveragePool", ["r2"], ["g2"], name="gap"),
              helper.make_node("Flatten", ["g2"], ["out"], name="flatten")]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", channels])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    if kind == "group":      # onnx's shape inference does not type GroupNormalization's output: the exporter's hint
        graph.value_info.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, ["N", channels, 6, 6]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("kind", ["instance", "group_as_torch", "layer", "group"])
def test_frozen_norm_is_exact_when_every_sample_has_the_same_statistics(kind):
    model = _norm_model(kind)
    analysis = analyse(model)
    names = candidates(analysis.problems)
    assert len(names) == 1 and analysis.blocking() == []                # compensated by default ...
    assert [n.outputs[0].name for n in analysis.compensated()] == names  # ... or frozen with --freeze-norm
    x = np.random.default_rng(1).normal(size=(1, 3, 6, 6)).astype(np.float32)
    same = [{"input": np.repeat(x, 4, axis=0)}]
    frozen, report = freeze(analysis.model, names, same)
    assert not {"InstanceNormalization", "LayerNormalization", "GroupNormalization"} & \
        {n.op_type for n in frozen.graph.node}
    assert analyse(frozen).blocking() == []                             # linear in the spikes now
    want = runtime.session(model).run(None, {"input": x})[0]
    got = runtime.session(frozen).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert report.layers[0]["rel_error"] < 1e-4 and report.output_rel_error < 1e-4


@pytest.mark.parametrize("kind", ["instance", "group_as_torch", "layer", "group"])
def test_frozen_norm_error_is_measured_and_matches_a_numpy_reference(kind):
    """Samples with different statistics: the frozen affine uses the mean statistics, and the
    reported error is the relative L2 error of the norm's output, as recomputed here."""
    model = _norm_model(kind)
    analysis = analyse(model)
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(32, 3, 6, 6)) * rng.uniform(0.5, 2, size=(32, 1, 1, 1))).astype(np.float32)
    frozen, report = freeze(analysis.model, candidates(analysis.problems), [{"input": x[:16]}, {"input": x[16:]}])
    name = report.layers[0]["output"]

    def tensor(m):
        proto = onnx.ModelProto()
        proto.CopyFrom(m)
        del proto.graph.output[:]
        proto.graph.output.extend([helper.make_tensor_value_info(name, TensorProto.FLOAT, None)])
        return runtime.session(proto).run(None, {"input": x})[0].astype(np.float64)

    want, got = tensor(model), tensor(frozen)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert report.layers[0]["rel_error"] == pytest.approx(rel, rel=1e-3)
    assert 0.01 < rel < 1.0 and report.samples == 32


def _fcos_head(tmp_path):
    """An FCOS-style head in torch: (Conv3x3 -> GroupNorm(32 groups... here 4) -> ReLU) x 2, then a
    class and a box branch; exported with torch's TorchScript exporter (GroupNorm as Reshape +
    InstanceNormalization)."""
    import io

    import torch
    from torch import nn
    torch.manual_seed(0)

    class Head(nn.Module):
        def __init__(self, c=16):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU())
            self.tower = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(4, c), nn.ReLU(),
                                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(4, c), nn.ReLU())
            self.cls, self.box = nn.Conv2d(c, 5, 3, padding=1), nn.Conv2d(c, 4, 3, padding=1)

        def forward(self, x):
            t = self.tower(self.stem(x))
            return self.cls(t), torch.relu(self.box(t))

    net = Head().eval()
    buf = io.BytesIO()
    torch.onnx.export(net, torch.zeros(2, 3, 16, 16), buf, input_names=["input"], output_names=["cls", "box"],
                      dynamic_axes={"input": {0: "N"}, "cls": {0: "N"}, "box": {0: "N"}}, opset_version=17,
                      dynamo=False)
    path = tmp_path / "fcos_head.onnx"
    path.write_bytes(buf.getvalue())
    return path


def test_fcos_style_head_converts_with_freeze_norm_and_reports_the_error(tmp_path, capsys):
    path = _fcos_head(tmp_path)
    assert "InstanceNormalization" in {n.op_type for n in onnx.load(path).graph.node}
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input=rng.uniform(0, 1, size=(160, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "head.snn.onnx"
    base = [str(path), "--data", str(tmp_path / "calib.npz"), "-o", str(out), "-T", "64", "--iters", "40",
            "--check", "0"]
    assert main(base + ["-q"]) == 0                 # without the flag the norms are compensated (running means)
    capsys.readouterr()
    compensated = SNNInfo.from_metadata(onnx.load(out)).compensated
    norms = [n.name for n in onnx.load(path).graph.node if n.op_type == "InstanceNormalization"]
    assert set(norms) <= set(compensated), compensated
    assert main(["inspect", str(path)]) == 0
    assert "expectation compensation" in capsys.readouterr().out
    assert main(["inspect", str(path), "--freeze-norm"]) == 0              # frozen instead with the option
    printed = capsys.readouterr().out
    assert "frozen to fixed affines (--freeze-norm" in printed and "expectation compensation" not in printed
    assert main(base + ["--freeze-norm"]) == 0
    printed = capsys.readouterr().out
    assert "froze 2 normalisation layer(s) on 160 samples" in printed and "relative error each adds" in printed
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    frozen = json.loads(meta["onnx2snn.frozen_norms"])
    assert len(frozen["layers"]) == 2 and all(0 < d["rel_error"] < 1 for d in frozen["layers"])
    # the SNN follows the ANN: its error against the ANN is of the order the freezing reported
    x = rng.uniform(0, 1, size=(16, 3, 16, 16)).astype(np.float32)
    ann = runtime.session(path).run(None, {"input": x})
    snn = runtime.session(out).run(None, {"input": x})
    for a, s in zip(ann, snn):
        assert s.shape == a.shape
        assert np.linalg.norm(s - a) / np.linalg.norm(a) < 0.5 + frozen["output_rel_error"]
