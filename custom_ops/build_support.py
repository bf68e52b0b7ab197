"""Finding a C++ compiler and onnxruntime's C/C++ API headers, and the compile flags, for the operator
build (used by setup.py and tools/build_wheel.py).

Headers are looked up in $ONNXRUNTIME_INCLUDE_DIR, /usr/include/onnxruntime, a per-user cache, or
fetched into that cache from Debian trixie's libonnxruntime-dev with apt-get + dpkg -x (never
installed into the system). The download is verified with Debian's archive keyring; without the
keyring nothing is downloaded and the build stops with what to install or set.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HEADER = "onnxruntime_cxx_api.h"
DEB_PACKAGE = "libonnxruntime-dev"
DEB_SUITE = "trixie"
DEB_MIRROR = "http://deb.debian.org/debian"
SYSTEM_DIRS = (Path("/usr/include/onnxruntime"), Path("/usr/local/include/onnxruntime"))
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MISSING = (f"onnxruntime C++ headers (onnxruntime_cxx_api.h) not found. Install Debian's {DEB_PACKAGE} "
           "(trixie or newer) or set ONNXRUNTIME_INCLUDE_DIR to a folder holding onnxruntime's headers.")


class BuildError(SystemExit):
    """Stops the build with one line saying what to install or set."""

    def __init__(self, message):
        super().__init__("onnx2snn build error: " + message)


def _cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnx2snn" / "onnxruntime-headers"


def _fetch_debian_headers(cache):
    """Download libonnxruntime-dev from Debian trixie into `cache` without installing it."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return None
    if not os.path.exists(KEYRING):
        raise BuildError(MISSING + f" (Debian's archive keyring {KEYRING} is absent, so nothing was "
                         "downloaded: unsigned packages are never fetched)")
    signed = f"[signed-by={KEYRING}] "
    with tempfile.TemporaryDirectory(prefix="onnx2snn-apt-") as tmp:
        tmp = Path(tmp)
        (tmp / "lists" / "partial").mkdir(parents=True)
        (tmp / "cache" / "archives" / "partial").mkdir(parents=True)
        sources = tmp / "sources.list"
        sources.write_text(f"deb {signed}{DEB_MIRROR} {DEB_SUITE} main\n")
        opts = [
            "-o", f"Dir::Etc::SourceList={sources}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={tmp / 'lists'}",
            "-o", f"Dir::Cache={tmp / 'cache'}",
            "-o", "Debug::NoLocking=1",
            "-o", "APT::Sandbox::User=root",
            "-qq",
        ]
        try:
            subprocess.run(["apt-get", *opts, "update"], check=True, cwd=tmp,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            subprocess.run(["apt-get", *opts, "download", DEB_PACKAGE], check=True, cwd=tmp,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except subprocess.CalledProcessError as err:
            print("onnx2snn: could not fetch %s: %s" % (DEB_PACKAGE, (err.stderr or b"").decode()[-400:]),
                  file=sys.stderr)
            return None
        debs = sorted(tmp.glob(DEB_PACKAGE + "_*.deb"))
        if not debs:
            return None
        unpacked = tmp / "unpacked"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(unpacked)], check=True)
        include = unpacked / "usr" / "include" / "onnxruntime"
        if not (include / HEADER).exists():
            return None
        staging = cache.parent / (cache.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(include, staging)
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(staging, cache)  # atomic: a half-copied cache is never used
    return cache


def find_onnxruntime_headers():
    env = os.environ.get("ONNXRUNTIME_INCLUDE_DIR")
    if env:
        if not (Path(env) / HEADER).exists():
            raise BuildError(f"ONNXRUNTIME_INCLUDE_DIR={env} does not contain {HEADER}")
        return Path(env)
    for candidate in (*SYSTEM_DIRS, _cache_dir()):
        if (candidate / HEADER).exists():
            return candidate
    fetched = _fetch_debian_headers(_cache_dir())
    if fetched:
        return fetched
    raise BuildError(MISSING)


# GCC and Clang (Linux, macOS): C++17, no FMA contraction (-ffp-contract=off: every kernel rounds each
# product and each sum, so results equal the NumPy references bit for bit), and only the library's
# entry points exported.
UNIX_FLAGS = ["-std=c++17", "-O3", "-ffp-contract=off", "-fno-trapping-math", "-fvisibility=hidden"]
# MSVC: /fp:precise does not contract into FMA in Visual Studio 2022 17.0 and later unless
# /fp:contract is given (earlier versions did where /arch allowed FMA); ops.h's
# `#pragma fp_contract(off)` asks the same of every version. No /arch: the library stays on the
# default SSE2 baseline, and MSVC compiles its AVX-512 intrinsics regardless of /arch (they run only
# where the CPU has AVX-512F), so no file needs /arch:AVX512; should a Visual Studio refuse them,
# adding "/DONNX2SNN_BASELINE_ONLY" here leaves them out. (MSVC was never run here.) /EHsc for C++
# exceptions. Symbols are hidden unless exported (register.cc exports its entry points).
MSVC_FLAGS = ["/std:c++17", "/O2", "/fp:precise", "/EHsc"]


def compile_flags(compiler_type):
    """The flags for a setuptools compiler type ("unix", "msvc", ...)."""
    return list(MSVC_FLAGS if compiler_type == "msvc" else UNIX_FLAGS)


def check_compiler():
    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler.split()[0]) is None and (os.environ.get("CXX") or shutil.which("g++") is None):
        raise BuildError(f"no C++ compiler found ({compiler}): install g++ (Debian/Ubuntu: apt-get install g++) "
                         "or set CXX to a C++17 compiler")
    return compiler
