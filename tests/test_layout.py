"""The suite's own layout: its folders mirror the package, every folder is a package (so helpers are
imported, and two tests may share a file name), no test or tool edits sys.path to find a helper,
and the tools never import the tests (the tests import tools.fixtures)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS, TOOLS, PACKAGE = ROOT / "tests", ROOT / "tools", ROOT / "onnx2snn"
NOT_MIRRORS = {"support", "custom_ops"}    # test helpers; the C++ operators (custom_ops/ at the root)


def _folders(root: Path):
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_test_folders_mirror_the_package_and_are_packages():
    subpackages = {p.name for p in _folders(PACKAGE) if (p / "__init__.py").exists()}
    folders = [p for p in _folders(TESTS) if any(p.glob("*.py"))]
    assert folders, TESTS
    stray = [p.name for p in folders if p.name not in subpackages | NOT_MIRRORS]
    assert not stray, f"test folders with no onnx2snn subpackage of that name: {stray}"
    assert (TESTS / "__init__.py").exists()
    missing = [str(p.relative_to(ROOT)) for p in folders + [TOOLS / "fixtures"] if not (p / "__init__.py").exists()]
    assert not missing, f"folders that are not packages: {missing}"
    loose = [p.name for p in TESTS.glob("test_*.py") if p.name not in {"test_readme.py", "test_layout.py"}]
    assert not loose, f"tests outside the mirrored folders: {loose}"


def test_no_test_or_tool_edits_sys_path_and_tools_never_import_tests():
    edits, backwards = [], []
    for path in list(TESTS.rglob("*.py")) + list(TOOLS.rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        text = path.read_text()
        if ("sys.path.insert" in text or "sys.path.append" in text) and path.name not in {"build_wheel.py", "test_layout.py"}:
            edits.append(str(path.relative_to(ROOT)))
        if TOOLS in path.parents and any(m == "tests" or m.startswith("tests.") for m in _imports(path)):
            backwards.append(str(path.relative_to(ROOT)))
    assert not edits, f"sys.path edited in {edits}: import the helper as a package (tools.fixtures, tests.support)"
    assert not backwards, f"tools importing the tests: {backwards}"
