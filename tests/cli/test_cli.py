"""The command line: success paths, JSON output, and one-line errors with exit code 1."""
import json

import numpy as np
import onnx
from PIL import Image

from onnx2snn.cli import main
from tests.support.cli import one_line_error, run_cli


def test_convert_then_eval_then_run(cnn_path, digits_npz, tmp_path):
    calib, test = digits_npz
    out = tmp_path / "cnn.snn.onnx"
    code, stdout, err = run_cli(cnn_path, "--data", calib, "-o", out, "--iters", 30, "-T", 32, "--check", 50)
    assert code == 0, err
    assert out.exists() and "IFNeuron" not in stdout and "/MaxPool" in stdout and "agreement" in stdout
    # the defaults with data: the corrections for T and a chosen delay, both said and recorded
    assert "both correction at T=32 on 200 samples" in stdout and "chosen on 200 samples" in stdout
    from onnx2snn.snn.info import SNNInfo
    info = SNNInfo.from_metadata(onnx.load(out))
    assert info.thresholds["correction"]["kind"] == "both" and info.thresholds["correction"]["timesteps"] == 32
    report = tmp_path / "eval.json"
    code, stdout, err = run_cli("eval", out, "--data", test, "--ann", cnn_path, "-T", "8,32,64",
                             "--limit", 100, "--json", report, "-q")
    assert code == 0, err
    result = json.loads(report.read_text())
    assert result["samples"] == 100 and 0.8 < result["ann"]["accuracy"] <= 1
    assert [r["T"] for r in result["snn"]] == [8, 32, 64]
    assert set(result["snn"][0]) == {"T", "delay", "accuracy", "agreement", "rel_error", "metrics"}
    assert result["task"] == "classify" and result["snn"][0]["metrics"]["top1"] == result["snn"][0]["accuracy"]
    assert result["snn"][-1]["agreement"] >= 0.9
    npz = tmp_path / "outs.npz"
    code, stdout, err = run_cli("run", out, "--data", test, "-o", npz, "--limit", 10)
    assert code == 0, err
    assert np.load(npz)["logits"].shape == (10, 10)


def test_default_output_name_and_input_untouched(cnn_path, digits_npz, tmp_path):
    model = tmp_path / "net.onnx"
    model.write_bytes(cnn_path.read_bytes())
    before = model.read_bytes()
    assert main([str(model), "--data", str(digits_npz[0]), "--iters", "3", "--check", "0", "-q"]) == 0
    assert (tmp_path / "net.snn.onnx").exists() and model.read_bytes() == before
    assert main(["convert", str(model), "--data", str(digits_npz[0]), "--iters", "3", "-o", str(model), "-q"]) == 1
    assert model.read_bytes() == before


def test_help_for_every_command():
    for cmd in ([], ["convert"], ["eval"], ["run"], ["demo"]):
        code, out, _ = run_cli(*cmd, "--help")
        assert code == 0 and "usage: onnx2snn" in out
    assert "--save-thresholds" in run_cli("convert", "--help")[1]


def test_missing_model_file(tmp_path):
    code, _, err = run_cli(tmp_path / "nope.onnx", "--data", tmp_path)
    one_line_error(code, err, "nope.onnx", "no such file")


def test_non_onnx_file(tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("this is not a model")
    code, _, err = run_cli(bogus, "--data", tmp_path)
    one_line_error(code, err, "bogus.onnx", "not an ONNX model")


def test_empty_data_folder(cnn_path, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(cnn_path, "--data", empty, "-o", tmp_path / "x.onnx")
    one_line_error(code, err, "empty", "no images found")
    assert not (tmp_path / "x.onnx").exists()


def test_data_that_does_not_fit_the_input(cnn_path, tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((10, 3, 8, 8), np.float32))
    code, _, err = run_cli(cnn_path, "--data", wrong, "-o", tmp_path / "x.onnx")
    one_line_error(code, err, "wrong.npy", "'input'", "[3, 8, 8]")


def test_images_of_the_wrong_kind_for_the_model(cnn_path, tmp_path):
    folder = tmp_path / "imgs" / "cat"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    code, _, err = run_cli(cnn_path, "--data", tmp_path / "imgs", "--mean", "0.5,0.5", "-o", tmp_path / "x.onnx")
    one_line_error(code, err, "--mean", "2 values")


def test_bad_flag_values(cnn_path, digits_npz, tmp_path):
    code, _, err = run_cli(cnn_path, "--data", digits_npz[0], "--iters", 0)
    one_line_error(code, err, "--iters")
    code, _, err = run_cli(cnn_path, "--data", digits_npz[0], "--thresholds", tmp_path / "none.json")
    one_line_error(code, err, "--thresholds", "none.json")
    code, _, err = run_cli("eval", cnn_path, "--data", digits_npz[1])
    one_line_error(code, err, "not a model converted by onnx2snn")


def test_unconvertible_model_lists_the_nodes(tmp_path):
    from tools.fixtures import graphs
    import onnx
    path = tmp_path / "gate.onnx"
    onnx.save(graphs.hard_gate_model(), path)
    np.save(tmp_path / "d.npy", np.ones((4, 2, 3, 3), np.float32))
    code, _, err = run_cli(path, "--data", tmp_path / "d.npy", "--iters", 2)
    one_line_error(code, err, "Greater 'gate'", "not linear", "expectation compensation cannot")


def test_looped_portable_early_exit_model_from_the_cli(cnn_path, digits_npz, tmp_path):
    calib, test = digits_npz
    out = tmp_path / "ee.onnx"
    code, stdout, err = run_cli(cnn_path, "--data", calib, "-o", out, "--iters", 30, "-T", 64, "--form", "loop",
                             "--chunk", 4, "--portable", "--early-exit", "--check", 20)
    assert code == 0, err
    assert "loop, chunk 4, portable, early exit" in stdout
    import onnx
    model = onnx.load(out)
    assert all(o.domain in ("", "ai.onnx") for o in model.opset_import)
    code, stdout, err = run_cli("run", out, "--data", test, "-o", tmp_path / "o.npz", "--limit", 8)
    assert code == 0, err
    res = np.load(tmp_path / "o.npz")
    assert res["logits"].shape == (8, 10) and 16 <= int(res["onnx2snn_steps"].max()) <= 64
    code, _, err = run_cli("run", out, "--data", test, "-o", tmp_path / "o.npy")
    one_line_error(code, err, "o.npy", "2 outputs")
    code, _, err = run_cli(cnn_path, "--data", calib, "--chunk", 4)
    one_line_error(code, err, "--chunk needs --form loop")


def test_data_loader_with_wrong_dtype_gives_one_line(cnn_path, tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("import numpy as np\n"
                      "def load():\n"
                      "    yield {'input': np.zeros((2, 1, 8, 8), np.float32)[:, :, :, :7]}\n")
    code, _, err = run_cli(cnn_path, "--data-loader", f"{script}:load", "-o", tmp_path / "x.onnx")
    one_line_error(code, err, "--data-loader", "do not fit input 'input'")


def test_unknown_flag_and_bad_choice_are_one_line_exit_1(cnn_path):
    code, _, err = run_cli(cnn_path, "--no-such-flag")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "--no-such-flag" in lines[0]
    code, _, err = run_cli(cnn_path, "--method", "magic")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "magic" in err


def test_fixed_batch_model_uses_its_batch_size(tmp_path):
    from tools.fixtures import graphs
    import onnx
    path = tmp_path / "fixed.onnx"
    onnx.save(graphs.fixed_batch_mlp(), path)            # input [1, 2, 2, 2]
    data = tmp_path / "d.npz"
    np.savez(data, input=np.random.default_rng(0).normal(size=(7, 2, 2, 2)).astype(np.float32))
    code, _, err = run_cli(path, "--data", data, "--batch-size", 100, "-o", tmp_path / "x.onnx")
    one_line_error(code, err, "--batch-size 100", "fixed batch size of 1")
    code, out, err = run_cli(path, "--data", data, "--iters", 5, "-o", tmp_path / "x.onnx", "--check", 5)
    assert code == 0, err
    code, out, err = run_cli("eval", tmp_path / "x.onnx", "--data", data, "--ann", path, "-T", "8,16", "-q")
    assert code == 0, err
    assert "samples: 7" in out


def test_every_command_takes_q_v_and_json_with_one_meaning(tmp_path, capsys):
    """-q, -v and --json on every command: -q prints only the command's result line (or nothing),
    --json alone prints only JSON, --json FILE writes it there (the text as usual)."""
    from tools.fixtures import graphs
    from onnx2snn.cli import COMMANDS, build_parser
    positional = {"convert": ["m.onnx"], "eval": ["s.onnx"], "run": ["s.onnx"], "inspect": ["m.onnx"],
                  "export-nir": ["s.onnx"], "run-nir": ["g.nir"], "demo": [], "optimize": ["s.onnx"]}
    assert set(positional) == set(COMMANDS)
    parser = build_parser()
    for command in COMMANDS:
        for flags, want in ((["-q"], (True, False, None)), (["-v"], (False, True, None)),
                            (["--json"], (False, False, "-")), (["--json", "r.json"], (False, False, "r.json"))):
            args = parser.parse_args([command, *positional[command], *flags])
            assert (args.quiet, args.verbose, args.json) == want, (command, flags)
    model, data = tmp_path / "m.onnx", tmp_path / "x.npy"
    onnx.save(graphs.deep_chain_model(depth=3), model)
    np.save(data, np.random.default_rng(0).normal(size=(60, 16)).astype(np.float32))
    snn = tmp_path / "m.snn.onnx"
    capsys.readouterr()
    assert main([str(model), "--data", str(data), "--iters", "5", "-T", "16", "--check", "8", "-o", str(snn),
                 "--json"]) == 0
    conversion = json.loads(capsys.readouterr().out)
    assert conversion["output"] == str(snn) and conversion["timesteps"] == 16 and len(conversion["layers"]) == 3
    assert conversion["correction"]["kind"] == "both" and [r["T"] for r in conversion["check"]["snn"]] == [4, 8, 16]
    assert main(["run", str(snn), "--data", str(data), "-o", str(tmp_path / "o.npy"), "-q"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'o.npy'}\n"
    assert main(["run", str(snn), "--data", str(data), "-o", str(tmp_path / "o.npy"), "--json",
                 str(tmp_path / "run.json")]) == 0
    assert capsys.readouterr().out.startswith("wrote out [60, 5]")
    assert json.loads((tmp_path / "run.json").read_text())["outputs"]["out"]["shape"] == [60, 5]
    assert main(["inspect", str(model), "-q"]) == 0 and capsys.readouterr().out == ""
    assert main(["optimize", str(snn), "--portable-only", "-q"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'm.snn.opt.onnx'}\n"
    assert main(["optimize", str(snn), "--portable-only", "-o", str(tmp_path / "o.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"path": str(tmp_path / "o.onnx"), "rewrites": ["fused"]}
    assert main(["eval", str(snn), "--data", str(data), "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 60
    # --json FILE is checked like every output before any work: never onto an input
    assert main(["run", str(snn), "--data", str(data), "-o", str(tmp_path / "o.npy"), "--json", str(data)]) == 1
    assert "--json" in capsys.readouterr().err and data.stat().st_size > 0


def test_onnxruntime_log_lines_show_only_with_v(tmp_path):
    """A transformer's attention makes onnxruntime's optimizer warn (UnsqueezeElimination) in the
    sessions onnx-graphsurgeon's constant folding opens: `inspect` prints none of it, `-v` does.
    (The transformer converts: GELU, LayerNorm and attention outputs spike, the rest is compensated.)"""
    import torch
    import torch.nn as nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(1, 16, 4, 4)
            layer = nn.TransformerEncoderLayer(16, 2, 32, activation="gelu", batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.encoder(self.embed(x).flatten(2).transpose(1, 2)).mean(1))

    torch.manual_seed(0)
    path = tmp_path / "vit.onnx"
    torch.onnx.export(Tiny().eval(), torch.randn(1, 1, 8, 8), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}}, dynamo=False)
    code, out, err = run_cli("inspect", path)
    assert code == 0 and "expectation compensation" in out and "LayerNormalization" in out
    assert ":onnxruntime:" not in out + err and not err.strip(), err[-2000:]
    code, out, err = run_cli("inspect", path, "-v")
    assert code == 0 and "W:onnxruntime:" in err           # the same run, verbose: its warnings shown
