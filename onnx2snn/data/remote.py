"""`--data URL`: data in an object store or any other filesystem fsspec knows (s3://, gs://, az://,
https://, file://, ...), copied once into a local cache on each machine that reads it (the driver
and every cluster worker), then opened like a local path.

The copy of a URL lives in $ONNX2SNN_DATA_CACHE (default ~/.cache/onnx2snn/data) under a folder
named by the URL's hash; it is made in a temporary folder and renamed into place when complete, so
an interrupted copy is never used and two processes on one machine never read a half-made one.
fsspec (and the package of the URL's protocol, e.g. s3fs) is imported only for a URL.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UserError, param

CACHE_ENV = "ONNX2SNN_DATA_CACHE"


def is_url(data) -> bool:
    return isinstance(data, str) and "://" in data


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "onnx2snn" / "data")


def _fsspec():
    try:
        import fsspec
        return fsspec
    except ImportError:
        raise UserError(f"{param('data')} URL: the Python package 'fsspec' is not installed (pip install fsspec, and "
                        f"the "
                        "package of the URL's protocol, e.g. s3fs for s3://)") from None


def localize(url: str) -> Path:
    """The local copy of `url` (a file or a folder, copied whole the first time on this machine)."""
    fsspec = _fsspec()
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise UserError(f"{param('data')} {url}: {err}") from None
    name = Path(path.rstrip("/")).name or "data"
    home = cache_root() / hashlib.sha256(url.encode()).hexdigest()[:20]
    done = home / name
    if done.exists():
        return done
    home.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=".part-", dir=home))
    try:
        try:
            if not fs.exists(path):
                raise UserError(f"{param('data')} {url}: no such file or folder")
            if fs.isdir(path):
                files = [f for f in fs.find(path) if not fs.isdir(f)]
                if not files:
                    raise UserError(f"{param('data')} {url}: the folder is empty")
                base = path.rstrip("/")
                for f in files:
                    target = part / name / f[len(base):].lstrip("/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(f, str(target))
            else:
                fs.get_file(path, str(part / name))
        except UserError:
            raise
        except Exception as err:      # the filesystem's own errors: permissions, network, credentials
            raise UserError(f"{param('data')} {url}: cannot copy it here ({type(err).__name__}: {err})") from None
        try:
            os.rename(part / name, done)
        except OSError:
            if not done.exists():       # another process finished the same copy first: use it
                raise
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return done
