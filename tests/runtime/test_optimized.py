"""`onnx2snn optimize`: the converted file written as onnx2snn's sessions run it. Plain onnxruntime
(the operator library registered, nothing of onnx2snn's sessions) runs it with the outputs of the
converted file bit for bit; the record in its metadata keeps it on the onnxruntime and CPU it was
made for; the commands that read a converted file refuse it."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx2snn import SNNConfig, Thresholds, library_path, runtime, to_snn
from onnx2snn.cli import main
from onnx2snn.errors import UserError
from onnx2snn.graph.analyse import analyse
from onnx2snn.runtime import layout
from onnx2snn.runtime.optimized import KEY, optimized_for
from onnx2snn.snn.info import SNNInfo
from tools.fixtures import graphs

BLOCKED = pytest.mark.skipif(not layout.block_size(), reason="onnxruntime uses no blocked channel layout on this CPU")


def _snn(make=graphs.residual_integer_model, **kw):
    model = make()
    acts = analyse(model).activations          # spiking sites of non-ReLU ops included
    rng = np.random.default_rng(3)
    th = Thresholds({a.name: (2.0 ** rng.integers(0, 3, size=a.channels)).astype(np.float32) for a in acts}, "manual")
    snn, _ = to_snn(model, th, SNNConfig(timesteps=12, delay=2, **kw))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return snn, np.random.default_rng(0).normal(size=[5] + shape).astype(np.float32)


def _plain(model, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    """What another binding gets: onnxruntime with the library registered, nothing else."""
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(library_path())
    opts.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@BLOCKED
@pytest.mark.parametrize("kw", [{}, {"form": "loop", "chunk": 4}])
@pytest.mark.parametrize("make", [lambda: graphs.residual_integer_model(channels=16),
                                  lambda: graphs.spiking_pool_model(channels=16),
                                  lambda: graphs.silu_conv_model(channels=16)])
def test_plain_onnxruntime_runs_the_optimized_file_with_the_converted_files_outputs(make, kw):
    snn, x = _snn(make, **kw)
    want = runtime.session(snn, rewrite=False).run(None, {"input": x})
    assert np.any(want[0] != 0)
    opt = runtime.optimize(snn)
    made = optimized_for(opt)
    assert "blocked" in made["rewrites"] and made["onnxruntime"] == ort.__version__
    assert made["block"] == layout.block_size()
    assert any(n.domain == "com.microsoft.nchwc" for n in opt.graph.node)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        assert _same(_plain(opt, level).run(None, {"input": x}), want)
    assert _same(runtime.session(opt).run(None, {"input": x}), want)
    assert SNNInfo.from_metadata(opt).timesteps == 12       # the converted file's metadata is kept


def test_portable_only_fuses_the_neuron_inputs_for_any_cpu():
    snn, x = _snn()
    opt = runtime.optimize(snn, portable_only=True)
    assert optimized_for(opt) == {"rewrites": ["fused"]}
    assert not any(n.domain == "com.microsoft.nchwc" for n in opt.graph.node)
    assert len(opt.graph.node) < len(snn.graph.node)
    want = runtime.session(snn, rewrite=False).run(None, {"input": x})
    assert _same(_plain(opt).run(None, {"input": x}), want)


@BLOCKED
def test_a_file_optimized_for_another_onnxruntime_or_cpu_is_refused_naming_both():
    snn, x = _snn(lambda: graphs.residual_integer_model(channels=16))
    opt = runtime.optimize(snn)
    record = next(p for p in opt.metadata_props if p.key == KEY)
    made = json.loads(record.value)
    record.value = json.dumps(dict(made, block=made["block"] * 2, onnxruntime="1.0.0"))
    with pytest.raises(UserError, match=r"optimized for onnxruntime 1\.0\.0 .* with 32-channel blocks; this is "
                                        rf"onnxruntime {ort.__version__} .* with 16"):
        runtime.session(opt)


def test_nothing_to_optimize_and_optimizing_twice_are_one_line_errors():
    snn, _ = _snn(portable=True)
    with pytest.raises(UserError, match="nothing to optimize"):
        runtime.optimize(snn, "m.onnx")
    opt = runtime.optimize(_snn()[0], portable_only=True)
    with pytest.raises(UserError, match="m.onnx: already optimized"):
        runtime.optimize(opt, "m.onnx")


def test_cli_optimize_then_run_and_the_commands_that_need_the_converted_file_refuse_it(tmp_path, capsys):
    snn, x = _snn()
    path = tmp_path / "m.snn.onnx"
    onnx.save(snn, path)
    before = path.read_bytes()
    assert main(["optimize", str(path), "--portable-only", "--json", str(tmp_path / "o.json")]) == 0
    out = tmp_path / "m.snn.opt.onnx"
    assert json.loads((tmp_path / "o.json").read_text()) == {"path": str(out), "rewrites": ["fused"]}
    assert path.read_bytes() == before
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"), "-q"]) == 0
    want = runtime.session(snn, rewrite=False).run(None, {"input": x})[0]
    assert np.array_equal(np.load(tmp_path / "y.npy"), want)
    capsys.readouterr()
    for argv in (["eval", str(out), "--data", str(tmp_path / "x.npy")], ["export-nir", str(out)],
                 ["optimize", str(out), "-o", str(tmp_path / "again.onnx")]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "an optimized file (onnx2snn optimize) is for running" in err[0], err
    assert not (tmp_path / "again.onnx").exists()
