"""The README opens with the two commands CI runs; the demo (the main job) works as documented."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.strip().splitlines() if line.strip()]


def test_readme_opens_with_setup_and_test_commands_that_ci_runs():
    setup, tests = _readme_commands()[:2]
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup in ci and tests in ci
    assert "pip install" in setup and "onnx2snn demo" in setup
    assert "pytest" in tests


def test_demo_command_runs_and_reports(tmp_path):
    setup = _readme_commands()[0]
    demo_args = setup.split("onnx2snn demo", 1)[1].split()
    out = tmp_path / "demo.snn.onnx"
    args = [a if not a.endswith(".snn.onnx") else str(out) for a in demo_args]
    proc = subprocess.run([sys.executable, "-m", "onnx2snn", "demo", *args], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    rows = [l.split() for l in proc.stdout.splitlines() if re.match(r"^\d+\s+\d+\s+\d+\.\d+%", l)]   # T, D, top-1
    acc = {int(r[0]): float(r[2].rstrip("%")) for r in rows}
    assert sorted(acc) == [8, 16, 32, 64]
    ann = float(re.search(r"ANN: top-1 ([\d.]+)%", proc.stdout).group(1))
    assert ann > 95 and acc[64] >= ann - 2


def test_python_api_snippet_runs(cnn_path, digits_npz, tmp_path, monkeypatch):
    """The README's API example, run as written on the digits CNN (paths and input substituted)."""
    import numpy as np
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Python API\s+```python\n(.*?)```", text, re.S).group(1)
    calib, test = digits_npz
    code = (code.replace('"model.onnx"', repr(str(cnn_path))).replace('"calib/"', repr(str(calib)))
            .replace('"val/"', repr(str(test))).replace("iters=1000", "iters=20")
            .replace("mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)", ""))
    monkeypatch.chdir(tmp_path)
    scope = {"x": np.load(test)["input"][:4]}
    exec(compile(code, "README.md", "exec"), scope)
    assert (tmp_path / "model.snn.onnx").exists()
    assert scope["outputs"]["logits"].shape == (4, 10)
    assert scope["ev"].rows[0]["T"] == 64 and scope["ev"].rows[0]["agreement"] > 0.5


def test_layout_page_names_every_module():
    """The docs' layout page and the package agree: every module is listed."""
    layout = (ROOT / "docs" / "reference" / "layout.md").read_text()
    modules = [p for p in (ROOT / "onnx2snn").rglob("*.py") if p.name not in ("__init__.py", "__main__.py",
                                                                            "_version.py")]
    missing = [str(p.relative_to(ROOT)) for p in modules if f"`{p.name}`" not in layout]
    assert not missing, missing


def test_docstrings_point_only_at_files_in_the_repository():
    for path in list((ROOT / "onnx2snn").rglob("*.py")) + list((ROOT / "custom_ops").glob("*")):
        for name in re.findall(r"((?:[A-Za-z_]+/)*[A-Za-z_-]+\.md)\b", path.read_text()):
            assert (ROOT / name).exists(), (path, name)


def test_readme_is_a_front_door_whose_links_resolve():
    """The README stays short (the rest is the docs site) and every link in it names a file here."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) > 10
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing, missing


def test_docs_site_builds_with_warnings_as_errors(tmp_path):
    """mkdocs (the `docs` extra) builds the site in strict mode: every internal link and anchor
    resolves, the CLI reference is generated from the parser and the API from the docstrings."""
    pytest.importorskip("mkdocs", reason="the docs site needs the `docs` extra (pip install -e \".[docs]\")")
    pytest.importorskip("mkdocs_gen_files", reason="the docs site needs the `docs` extra")
    pytest.importorskip("mkdocstrings", reason="the docs site needs the `docs` extra")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**__import__("os").environ, "DISABLE_MKDOCS_2_WARNING": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert all(f'id="{c}"' in cli for c in ("convert", "eval", "run", "inspect", "export-nir", "run-nir", "demo"))
    assert "--max-memory" in cli
    assert "evaluate_file" in (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
