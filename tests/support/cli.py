"""The command line as a user runs it: a subprocess of `python -m onnx2snn`, and its one-line errors."""
import subprocess
import sys


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "onnx2snn", *map(str, args)], capture_output=True,
                          text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def one_line_error(code, err, *needles):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("onnx2snn: error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]
