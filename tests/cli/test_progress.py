"""Progress bars with an ETA on a terminal for calibration, the corrections (with the delay choice
riding in them) and eval; none under -q or eval --json. Run in a pseudo-terminal, as a user sees it."""
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import numpy as np
import onnx
import pytest

from tools.fixtures import graphs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pseudo-terminals: Linux only here")


def _in_terminal(args, cwd) -> str:
    """Everything the command writes to a terminal (stdout and stderr both on the pty)."""
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))   # a window tqdm can draw in
    proc = subprocess.Popen([sys.executable, "-m", "onnx2snn", *map(str, args)], stdin=sub, stdout=sub, stderr=sub,
                            cwd=cwd, close_fds=True)
    os.close(sub)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:          # the other side closed
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=300)
    os.close(main)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_bars_with_an_eta_on_a_terminal_and_none_when_quiet(tmp_path):
    onnx.save(graphs.deep_chain_model(depth=4, features=64), tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", input=rng.normal(size=(300, 64)).astype(np.float32))
    convert = ["m.onnx", "--data", "c.npz", "-o", "m.snn.onnx", "-T", "32", "--iters", "200", "--check", "0"]
    shown = _in_terminal(convert, tmp_path)
    eta = r"\[\d\d:\d\d<(\d\d:\d\d|\?)"          # tqdm: [elapsed<remaining (? until it has a rate)
    for step in ("calibrating", "potential correction and the delay", "bias correction and the delay"):
        assert re.search(re.escape(step) + r"[^\n\r]*" + eta, shown), (step, shown[-3000:])
    shown = _in_terminal(["eval", "m.snn.onnx", "--data", "c.npz", "-T", "16,32"], tmp_path)
    assert re.search(r"evaluating \(T up to 32\)[^\n\r]*" + eta, shown), shown[-3000:]
    for quiet in (convert + ["-q"], ["eval", "m.snn.onnx", "--data", "c.npz", "--json", "e.json"]):
        shown = _in_terminal(quiet, tmp_path)
        assert not re.search(eta, shown) and "it/s" not in shown and "batch/s" not in shown, shown[-2000:]
