"""The operator build says what to install or set when a compiler or the headers are missing."""

import pytest

from tests.support.native import build_support


def test_bad_header_dir_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXRUNTIME_INCLUDE_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="ONNXRUNTIME_INCLUDE_DIR=.* does not contain onnxruntime_cxx_api.h"):
        build_support.find_onnxruntime_headers()


def test_missing_headers_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.delenv("ONNXRUNTIME_INCLUDE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(build_support, "_fetch_debian_headers", lambda cache: None)
    monkeypatch.setattr(build_support, "SYSTEM_DIRS", ())
    with pytest.raises(SystemExit, match="libonnxruntime-dev .* ONNXRUNTIME_INCLUDE_DIR"):
        build_support.find_onnxruntime_headers()


def test_missing_compiler_says_what_to_install(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(SystemExit, match="no C\\+\\+ compiler found .* install g\\+\\+"):
        build_support.check_compiler()


def test_headers_found_here():
    assert (build_support.find_onnxruntime_headers() / "onnxruntime_cxx_api.h").exists()


def test_no_unsigned_download_without_the_keyring(monkeypatch, tmp_path):
    monkeypatch.setattr(build_support, "KEYRING", str(tmp_path / "absent.gpg"))
    calls = []
    monkeypatch.setattr(build_support.subprocess, "run", lambda *a, **k: calls.append(a))
    with pytest.raises(SystemExit, match="ONNXRUNTIME_INCLUDE_DIR.*keyring .* is absent"):
        build_support._fetch_debian_headers(tmp_path / "cache")
    assert calls == []   # nothing was downloaded
