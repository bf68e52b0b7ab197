"""The wheel tooling's fast parts: per-compiler flags, tag checks, and the bit-identity comparison.

The wheel itself is built, installed and tested by .ci/wheel (about two minutes), not here.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
from tests.support.native import build_support

_spec = importlib.util.spec_from_file_location("build_wheel", ROOT / "tools" / "build_wheel.py")
build_wheel = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_wheel)


def test_compile_flags_keep_the_bit_exactness_flags_per_compiler():
    unix = build_support.compile_flags("unix")
    assert {"-std=c++17", "-O3", "-ffp-contract=off", "-fno-trapping-math", "-fvisibility=hidden"} == set(unix)
    msvc = build_support.compile_flags("msvc")
    assert "/fp:precise" in msvc and "/std:c++17" in msvc and not any(f.startswith("-") for f in msvc)


@pytest.mark.parametrize("name,ok", [
    ("onnx2snn-0.1.0-py3-none-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl", True),
    ("onnx2snn-0.1.0-py3-none-manylinux2014_x86_64.whl", True),
    ("onnx2snn-0.1.0-py3-none-manylinux_2_28_x86_64.manylinux_2_34_x86_64.whl", False),
    ("onnx2snn-0.1.0-py3-none-linux_x86_64.whl", False),
])
def test_wheel_tag_must_be_manylinux_2_28_or_older(name, ok):
    versions = [build_wheel.manylinux_version(t) for t in build_wheel.wheel_tags(name)]
    assert (None not in versions and max(versions) <= (2, 28)) is ok


def test_compare_ops_finds_identical_and_different_outputs(tmp_path):
    script = ROOT / "tools" / "compare_ops.py"
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for out in (a, b):
        subprocess.run([sys.executable, script, "run", out], check=True, capture_output=True, cwd=tmp_path)
    same = subprocess.run([sys.executable, script, "diff", a, b], capture_output=True, text=True)
    assert same.returncode == 0 and "bit-identical" in same.stdout, same.stdout + same.stderr
    results = dict(np.load(a))
    key = next(k for k in results if k.startswith("IFNeuron") and k.endswith("/s"))
    flipped = results[key].copy()
    flipped.view(np.uint32).flat[0] ^= 1          # one bit of one output
    np.savez(b, **{**results, key: flipped})
    differ = subprocess.run([sys.executable, script, "diff", a, b], capture_output=True, text=True)
    assert differ.returncode != 0 and key in differ.stderr
