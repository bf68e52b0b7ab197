"""Every file the user names: inputs are checked once, outputs are refused when they would
destroy an input or a non-regular file, and are written atomically with the umask's mode.

A conversion reads the model, the data (a file or a folder), a thresholds file, a loader script
(`user_function` loads a user's FILE.py:FN, as --data-loader and --decode name them);
it writes the SNN, a thresholds file, a JSON report, an outputs file. `Files` holds the inputs of
one command so that no output can land on (or inside) any of them.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from .errors import UserError


def _umask_mode() -> int:
    """The permission bits a new file gets under the current umask (0o666 & ~umask)."""
    current = os.umask(0)
    os.umask(current)
    return 0o666 & ~current


class Files:
    """The inputs of one command, and checks that outputs leave them alone."""

    def __init__(self):
        self.inputs: list[tuple[str, Path]] = []   # (flag, resolved path)

    def input(self, path, flag: str, folder_ok: bool = False) -> Path:
        """An existing input file (or folder when `folder_ok`), remembered for output checks."""
        p = Path(path)
        if not p.exists():
            raise UserError(f"{flag} {p}: no such file" + (" or folder" if folder_ok else ""))
        if p.is_dir() and not folder_ok:
            raise UserError(f"{flag} {p}: is a folder, expected a file")
        if not p.is_dir() and not p.is_file():
            raise UserError(f"{flag} {p}: not a regular file")
        self.inputs.append((flag, p.resolve()))
        return p

    def output(self, path, flag: str) -> Path:
        """Check an output path before any work: its folder exists, it is not a folder, a device,
        a FIFO or a socket, and it is none of the inputs (nor inside an input folder). A symlink
        is written through: the file it points to is replaced."""
        p = Path(path)
        target = p.resolve()
        if target.exists() or p.is_symlink():
            if target.is_dir():
                raise UserError(f"{flag} {p}: is a folder; give a file name")
            if not target.is_file():
                raise UserError(f"{flag} {p}: exists and is not a regular file; refusing to replace it")
        if not target.parent.is_dir():
            raise UserError(f"{flag} {p}: folder {p.parent} does not exist")
        for other_flag, other in self.inputs:
            if target == other:
                raise UserError(f"{flag} {p}: is also an input ({other_flag}); refusing to overwrite it")
            if other.is_dir() and other in target.parents:
                raise UserError(f"{flag} {p}: lies inside the {other_flag} folder {other}; "
                                "write it elsewhere")
        return p


def write_atomic(path, data: bytes, flag: str = "-o") -> Path:
    """Write `data` through a temporary file in the target's folder, then rename it over the target:
    a reader never sees half a file, a failure leaves the previous file intact, and the file gets
    the mode a new file would get under the umask. Symlinks are written through."""
    path = Path(path)
    target = path.resolve()
    if target.exists() and not target.is_file():
        raise UserError(f"{flag} {path}: exists and is not a regular file; refusing to replace it")
    folder = target.parent
    if not folder.is_dir():
        raise UserError(f"{flag} {path}: folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot write there ({err.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, target)
    except OSError as err:
        _unlink(tmp)
        raise UserError(f"{flag} {path}: cannot write ({err.strerror})") from None
    except BaseException:
        _unlink(tmp)
        raise
    return path


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def user_function(spec: str, flag: str):
    """The function FN of a user's `FILE.py:FN` (`flag` names it in errors: one line each for a
    malformed spec, a missing file, a failing import and a missing function)."""
    path, _, func = str(spec).rpartition(":")
    if not path or not func:
        raise UserError(f"{flag} {spec}: expected FILE.py:FUNCTION")
    if not Path(path).is_file():
        raise UserError(f"{flag} {spec}: {path}: no such file")
    module_spec = importlib.util.spec_from_file_location("onnx2snn_user_" + flag.strip("-").replace("-", "_"), path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise UserError(f"{flag} {spec}: {path} failed to import: {err}") from None
    if not callable(getattr(module, func, None)):
        raise UserError(f"{flag} {spec}: {path} has no function {func}")
    return getattr(module, func)


def raised(flag: str, spec: str, err: Exception) -> UserError:
    """A user function's exception as one line naming the flag and the function."""
    msg = (str(err).strip().splitlines() or [""])[0]
    return UserError(f"{flag} {spec}: raised {type(err).__name__}: {msg}")
