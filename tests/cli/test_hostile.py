"""Hostile inputs, table-driven: each case checks the exit code, the one-line message, that no
output or temporary file is left behind and that every input file is byte-identical afterwards.

The models are hand-built (no training), so the table runs in seconds.
"""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tools.fixtures import graphs
from onnx2snn.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _state(folder: Path) -> dict:
    """Every entry under `folder`: (kind, mode, bytes) so changes of any kind show."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            out[str(p.relative_to(folder))] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
        elif stat.S_ISLNK(st.st_mode):
            out[str(p.relative_to(folder))] = ("link", os.readlink(p), b"")
        else:
            out[str(p.relative_to(folder))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), b"")
    return out


def _run(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:      # argparse
        code = exc.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _model(folder: Path) -> Path:
    path = folder / "m.onnx"
    onnx.save(graphs.deep_chain_model(depth=3), path)
    return path


def _data(folder: Path, n=60, name="d.npy", bad=None) -> Path:
    x = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)
    if bad is not None:
        x[bad] = np.inf
    np.save(folder / name, x)
    return folder / name


def _thresholds_file(folder: Path, values, top=None) -> Path:
    path = folder / "th.json"
    doc = top if top is not None else {"format": "onnx2snn-thresholds", "version": 1, "method": "ltb",
                                       "thresholds": values}
    path.write_text(json.dumps(doc).replace("NaN", "NaN"))
    return path


def _good_thresholds(folder: Path, **override) -> dict:
    values = {f"relu{i}": [1.0] * 16 for i in range(3)}
    values.update(override)
    return values


def _int_input_model(folder: Path) -> Path:
    nodes = [helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Gemm", ["f", "w"], ["g"], name="fc"),
             helper.make_node("Relu", ["g"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2"], ["out"], name="head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.INT64, ["N", 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(np.ones((4, 3), np.float32), "w"),
                               numpy_helper.from_array(np.ones((3, 2), np.float32), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "int.onnx"
    onnx.save(model, path)
    return path


def _snn(folder: Path, capsys) -> Path:
    m, d = _model(folder), _data(folder)
    code, _, err = _run([m, "--data", d, "-o", folder / "m.snn.onnx", "--iters", 2, "-T", 8, "--check", 0, "-q"],
                        capsys)
    assert code == 0, err
    return folder / "m.snn.onnx"


def _loader(folder: Path, body: str) -> str:
    (folder / "load.py").write_text(body)
    return f"{folder / 'load.py'}:batches"


# Each case: (name, setup(folder, capsys) -> (argv, expected files created), needles). The expected
# exit code is 1 unless the name says otherwise.
CASES = [
    # ---- data loss ------------------------------------------------------------------------
    ("output is a character device", lambda f, c: (
        [_model(f), "--data", _data(f), "-o", _chardev(f)], []), ["exists and is not a regular file"]),
    ("output is a FIFO", lambda f, c: (
        [_model(f), "--data", _data(f), "-o", _fifo(f)], []), ["exists and is not a regular file"]),
    ("output is a folder", lambda f, c: (
        [_model(f), "--data", _data(f), "-o", f], []), ["is a folder"]),
    ("output folder missing", lambda f, c: (
        [_model(f), "--data", _data(f), "-o", f / "nope" / "x.onnx"], []), ["does not exist"]),
    ("output under /proc", lambda f, c: (
        [_model(f), "--data", _data(f), "-o", "/proc/onnx2snn-test.onnx", "--iters", 2, "--check", 0], []),
     ["cannot write"]),
    ("save-thresholds onto the input model", lambda f, c: (
        [_model(f), "--data", _data(f), "--save-thresholds", f / "m.onnx"], []), ["--save-thresholds", "also an input (the model)"]),
    ("-o onto the --data file", lambda f, c: (
        [_model(f), "--data", _data(f), "-o", f / "d.npy"], []), ["-o", "also an input (--data)"]),
    ("-o onto the --thresholds file", lambda f, c: (
        [_model(f), "--thresholds", _thresholds_file(f, _good_thresholds(f)), "-o", f / "th.json"], []),
     ["-o", "also an input (--thresholds)"]),
    ("-o inside the --data folder", lambda f, c: (
        [_model(f), "--data", _datadir(f), "-o", f / "data" / "x.onnx"], []), ["inside the --data folder"]),
    ("run -o onto its own --data", lambda f, c: (
        ["run", _snn(f, c), "--data", f / "d.npy", "-o", f / "d.npy"], ["m.snn.onnx"]), ["-o", "also an input (--data)"]),
    ("eval --json onto the SNN", lambda f, c: (
        ["eval", _snn(f, c), "--data", f / "d.npy", "--json", f / "m.snn.onnx"], ["m.snn.onnx"]),
     ["--json", "also an input (the SNN)"]),
    ("eval --json is a folder", lambda f, c: (
        ["eval", _snn(f, c), "--data", f / "d.npy", "--json", f], ["m.snn.onnx"]), ["--json", "is a folder"]),
    # ---- non-finite or impossible numbers ---------------------------------------------------
    ("one +Inf sample in the data", lambda f, c: (
        [_model(f), "--data", _data(f, bad=(17, 3)), "--iters", 2], []), ["d.npy sample 17", "NaN or Inf"]),
    ("NaN in every sample with max", lambda f, c: (
        [_model(f), "--data", _nan_data(f), "--method", "max"], []), ["NaN or Inf"]),
    ("--lr inf", lambda f, c: ([_model(f), "--data", _data(f), "--lr", "inf"], []), ["--lr inf"]),
    ("--v-init nan", lambda f, c: ([_model(f), "--data", _data(f), "--v-init", "nan"], []), ["--v-init nan"]),
    ("--std nan", lambda f, c: ([_model(f), "--data", _data(f), "--std", "nan"], []), ["--std"]),
    ("--exit-stable 0", lambda f, c: (
        [_model(f), "--data", _data(f), "--form", "loop", "--early-exit", "--exit-stable", 0], []),
     ["--exit-stable 0"]),
    ("negative --exit-margin", lambda f, c: (
        [_model(f), "--data", _data(f), "--form", "loop", "--early-exit", "--exit-margin", -1], []),
     ["--exit-margin -1"]),
    ("negative --exit-min-steps", lambda f, c: (
        [_model(f), "--data", _data(f), "--form", "loop", "--early-exit", "--exit-min-steps", -2], []),
     ["--exit-min-steps -2"]),
    ("thresholds with null", lambda f, c: (
        [_model(f), "--thresholds", _thresholds_file(f, _good_thresholds(f, relu1=[None] * 16))], []),
     ["--thresholds", "expected a list of numbers"]),
    ("thresholds with NaN", lambda f, c: (
        [_model(f), "--thresholds", _thresholds_file(f, _good_thresholds(f, relu1=[float("nan")] * 16))], []),
     ["relu1", "non-finite"]),
    ("negative thresholds", lambda f, c: (
        [_model(f), "--thresholds", _thresholds_file(f, _good_thresholds(f, relu2=[-1.0] * 16))], []),
     ["relu2", "negative"]),
    ("thresholds JSON is a list", lambda f, c: (
        [_model(f), "--thresholds", _thresholds_file(f, None, top=[1, 2])], []), ["cannot read thresholds"]),
    ("float data for an int input", lambda f, c: (
        [_int_input_model(f), "--data", _float4(f)], []), ["takes int64", "truncate"]),
    # ---- failures that used to be tracebacks ------------------------------------------------
    ("external data missing", lambda f, c: (
        [_external(f), "--data", _data(f)], []), ["ext.onnx"]),
    ("run --limit 0", lambda f, c: (
        ["run", _snn(f, c), "--data", f / "d.npy", "--limit", 0, "-o", f / "o.npz"], ["m.snn.onnx"]), ["--limit 0"]),
    ("run --batch-size -2", lambda f, c: (
        ["run", _snn(f, c), "--data", f / "d.npy", "--batch-size", -2, "-o", f / "o.npz"], ["m.snn.onnx"]),
     ["--batch-size -2"]),
    ("eval --limit -3", lambda f, c: (
        ["eval", _snn(f, c), "--data", f / "d.npy", "--limit", -3], ["m.snn.onnx"]), ["--limit -3"]),
    ("eval --batch-size 0", lambda f, c: (
        ["eval", _snn(f, c), "--data", f / "d.npy", "--batch-size", 0], ["m.snn.onnx"]), ["--batch-size 0"]),
    ("eval --ann with other inputs", lambda f, c: (
        ["eval", _snn(f, c), "--data", f / "d.npy", "--ann", _other_inputs(f)], ["m.snn.onnx"]),
     ["--ann", "not inputs of the SNN"]),
    ("a data loader that raises", lambda f, c: (
        [_model(f), "--data-loader", _loader(f, "def batches():\n    raise ValueError('disk on fire')\n")], []),
     ["--data-loader", "raised ValueError: disk on fire"]),
    ("huge T", lambda f, c: (
        ["eval", _snn(f, c), "--data", f / "d.npy", "-T", 2 ** 40], ["m.snn.onnx"]), ["--timesteps 1099511627776", "runs per batch", "--max-memory"]),
    # ---- the cases that already worked --------------------------------------------------------
    ("missing model", lambda f, c: ([f / "none.onnx", "--data", _data(f)], []), ["none.onnx", "no such file"]),
    ("not an ONNX file", lambda f, c: ([_bytes(f, "x.onnx", b"hello"), "--data", _data(f)], []),
     ["x.onnx", "not an ONNX model"]),
    ("truncated protobuf", lambda f, c: ([_truncated(f), "--data", _data(f)], []), ["t.onnx"]),
    ("corrupt JPEG", lambda f, c: ([_image_model(f), "--data", _bad_jpeg(f), "--iters", 1], []),
     ["bad.jpg", "cannot read image"]),
    ("data of the wrong shape", lambda f, c: ([_model(f), "--data", _bytes_npy(f)], []), ["do not fit input"]),
    ("unsupported op between spiking layers", lambda f, c: ([_gate(f), "--data", _sig_data(f)], []),
     ["Greater 'gate'"]),
    # refused in inspect's words before any onnxruntime session runs (one asked for no outputs and crashed)
    ("no ReLU-like activation", lambda f, c: ([_no_relu(f), "--data", _sig_data(f)], []),
     ["not convertible: no activation to convert"]),
    ("no ReLU-like activation, --freeze-norm", lambda f, c: (
        [_no_relu(f), "--data", _sig_data(f), "--freeze-norm", "--iters", 1], []),
     ["not convertible: no activation to convert"]),
]


def _chardev(f: Path) -> Path:
    p = f / "dev"
    try:
        os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 3))   # a private /dev/null
    except PermissionError:
        pytest.skip("creating a character device needs root")
    return p


def _fifo(f: Path) -> Path:
    os.mkfifo(f / "fifo")
    return f / "fifo"


def _datadir(f: Path) -> Path:
    (f / "data").mkdir()
    _data(f / "data")
    return f / "data"


def _nan_data(f: Path) -> Path:
    x = np.full((20, 16), np.nan, np.float32)
    np.save(f / "nan.npy", x)
    return f / "nan.npy"


def _external(f: Path) -> Path:
    model = graphs.deep_chain_model(depth=3)
    onnx.save(model, f / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    (f / "ext.data").unlink()
    return f / "ext.onnx"


def _other_inputs(f: Path) -> Path:
    model = graphs.deep_chain_model(depth=3)
    model.graph.input[0].name = "other"
    for node in model.graph.node:
        node.input[:] = ["other" if i == "input" else i for i in node.input]
    onnx.save(model, f / "other.onnx")
    return f / "other.onnx"


def _bytes(f: Path, name: str, data: bytes) -> Path:
    (f / name).write_bytes(data)
    return f / name


def _truncated(f: Path) -> Path:
    data = graphs.deep_chain_model(depth=3).SerializeToString()
    return _bytes(f, "t.onnx", data[: len(data) // 2])


def _float4(f: Path) -> Path:
    np.save(f / "x.npy", np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32))
    return f / "x.npy"


def _image_model(f: Path) -> Path:
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["out"], name="flat")]
    onnx.save(graphs.make(nodes, {"w": np.ones((4, 3, 1, 1))}, ["N", 3, 8, 8], out_shape=["N", 4]), f / "img.onnx")
    return f / "img.onnx"


def _bad_jpeg(f: Path) -> Path:
    (f / "imgs").mkdir()
    (f / "imgs" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return f / "imgs"


def _bytes_npy(f: Path) -> Path:
    np.save(f / "w.npy", np.zeros((5, 3, 3), np.float32))
    return f / "w.npy"


def _gate(f: Path) -> Path:
    onnx.save(graphs.hard_gate_model(), f / "gate.onnx")
    return f / "gate.onnx"


def _no_relu(f: Path) -> Path:
    """Conv -> Conv -> Tanh -> GAP -> Flatten: nothing ReLU-like, and the one non-linear op feeds no
    weighted layer (a network with no activation to turn into neurons)."""
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1"),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Tanh", ["c2"], ["t2"], name="squash"),
             helper.make_node("GlobalAveragePool", ["t2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["out"], name="flat")]
    rng = np.random.default_rng(0)
    onnx.save(graphs.make(nodes, {"w1": rng.normal(size=(3, 2, 1, 1)), "w2": rng.normal(size=(4, 3, 1, 1))},
                          ["N", 2, 3, 3], out_shape=["N", 4]), f / "norelu.onnx")
    return f / "norelu.onnx"


def test_inspect_and_convert_refuse_a_model_without_relu_in_the_same_words(tmp_path, capsys):
    model, data = _no_relu(tmp_path), _sig_data(tmp_path)
    assert main(["inspect", str(model), "--json", str(tmp_path / "i.json")]) == 1      # 1: does not convert
    report = json.loads((tmp_path / "i.json").read_text())
    assert not report["convertible"]
    reason = [b["reason"] for b in report["blocking"] if b["node"] is None][0]
    capsys.readouterr()
    assert main([str(model), "--data", str(data), "-o", str(tmp_path / "x.snn.onnx")]) == 1
    assert f"not convertible: {reason}" in capsys.readouterr().err
    assert not (tmp_path / "x.snn.onnx").exists()


def _sig_data(f: Path) -> Path:
    np.save(f / "s.npy", np.ones((4, 2, 3, 3), np.float32))
    return f / "s.npy"


@pytest.mark.parametrize("name,setup,needles", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(name, setup, needles, tmp_path, capsys):
    argv, created = setup(tmp_path, capsys)
    capsys.readouterr()
    before = _state(tmp_path)
    code, out, err = _run(argv, capsys)
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 1, (name, code, err)
    assert len(lines) == 1 and lines[0].startswith("onnx2snn: error:"), (name, err)
    for needle in needles:
        assert needle in lines[0], (name, lines[0])
    assert _state(tmp_path) == before, (name, "files changed")   # inputs intact, nothing left behind


def test_ctrl_c_during_calibration_leaves_nothing(tmp_path, capsys):
    model, out = _model(tmp_path), tmp_path / "out.onnx"
    spec = _loader(tmp_path, "import numpy as np\n"
                             "def batches():\n"
                             "    for i in range(100):\n"
                             "        if i == 3:\n"
                             "            raise KeyboardInterrupt\n"
                             "        yield {'input': np.ones((4, 16), np.float32)}\n")
    before = _state(tmp_path)
    code, _, err = _run([model, "--data-loader", spec, "-o", out, "--iters", 10], capsys)
    assert code == 130 and err.strip() == "onnx2snn: interrupted"
    assert _state(tmp_path) == before


def test_ctrl_c_during_start_up_imports(tmp_path):
    """The console entry point imports the library inside main(): an interrupt while onnxruntime
    loads ends with one line and exit 130."""
    script = ("import sys\n"
              "class Interrupt:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'onnxruntime':\n"
              "            raise KeyboardInterrupt\n"
              "sys.meta_path.insert(0, Interrupt())\n"
              "from onnx2snn.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", script, "convert", "m.onnx", "--data", "d"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130 and proc.stderr.strip() == "onnx2snn: interrupted", proc.stderr


def test_skip_nonfinite_skips_and_counts(tmp_path, capsys):
    model, data = _model(tmp_path), _data(tmp_path, n=40, bad=(5, 0))
    code, _, err = _run([model, "--data", data, "--batch-size", 10, "--iters", 4, "--skip-nonfinite", "--check", 0,
                         "-q", "--save-thresholds", tmp_path / "th.json"], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "th.json").read_text())["info"]
    assert info["skipped_nonfinite_batches"] >= 1 and info["iters"] + info["skipped_nonfinite_batches"] == 4


def test_symlinked_output_is_written_through(tmp_path, capsys):
    model, data = _model(tmp_path), _data(tmp_path)
    (tmp_path / "real.onnx").write_bytes(b"old")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "real.onnx")
    code, _, err = _run([model, "--data", data, "-o", tmp_path / "link.onnx", "--iters", 2, "--check", 0, "-q"],
                        capsys)
    assert code == 0, err
    assert (tmp_path / "link.onnx").is_symlink()
    assert onnx.load(tmp_path / "real.onnx").graph.node


def test_outputs_get_the_umask_mode_even_when_replacing(tmp_path, capsys):
    model, data, out = _model(tmp_path), _data(tmp_path), tmp_path / "o.onnx"
    out.write_bytes(b"old")
    out.chmod(0o600)
    old = os.umask(0o022)
    try:
        code, _, err = _run([model, "--data", data, "-o", out, "--iters", 2, "--check", 0, "-q",
                             "--save-thresholds", tmp_path / "t.npz"], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "t.npz").stat().st_mode) == 0o644


def test_same_model_data_and_seed_give_the_same_bytes(tmp_path, capsys):
    model, data = _model(tmp_path), _data(tmp_path)
    outputs = []
    for k in range(2):
        argv = [model, "--data", data, "-o", tmp_path / f"s{k}.onnx", "--iters", 5, "--seed", 3, "-q",
                "--save-thresholds", tmp_path / f"t{k}.json", "--delay", "auto", "--delay-samples", 20, "-T", 8]
        code, _, err = _run(argv, capsys)
        assert code == 0, err
        outputs.append(((tmp_path / f"s{k}.onnx").read_bytes(), (tmp_path / f"t{k}.json").read_bytes()))
    assert outputs[0] == outputs[1]
    assert str(tmp_path) not in outputs[0][0].decode("latin-1") + outputs[0][1].decode()
