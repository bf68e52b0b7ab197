"""Build the IF-neuron operator library (custom_ops/) and bundle it in the onnx2snn package.

The library uses only onnxruntime's C/C++ API headers and does not link libonnxruntime; see
custom_ops/build_support.py for how the headers are found. It does not use Python's C API either,
so a wheel is tagged py3-none-<platform>: one wheel per platform serves every Python version.
tools/build_wheel.py builds the manylinux wheel (compiled as here, linked against an old glibc).
"""
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:                                   # setuptools >= 70.1 ships bdist_wheel itself
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:                    # older setuptools: the wheel package's
    from wheel.bdist_wheel import bdist_wheel

sys.path.insert(0, str(Path(__file__).resolve().parent / "custom_ops"))
from build_support import check_compiler, compile_flags, find_onnxruntime_headers  # noqa: E402


class BuildOps(build_ext):
    """Compile custom_ops/ into onnx2snn/_ops*.so with the flags the bit-exactness contract needs."""

    def build_extensions(self):
        kind = self.compiler.compiler_type
        if kind != "msvc":
            check_compiler()
        include = find_onnxruntime_headers()
        for ext in self.extensions:
            ext.include_dirs.append(str(include))
            ext.extra_compile_args = compile_flags(kind)
            if kind == "msvc":         # no visibility attributes on Windows: export the entry point
                ext.export_symbols = ["RegisterCustomOps"]
        super().build_extensions()


class PlatformWheel(bdist_wheel):
    """Tag the wheel py3-none-<platform>: the library is loaded by onnxruntime, not imported by Python."""

    def get_tag(self):
        return ("py3", "none", super().get_tag()[2])


setup(
    ext_modules=[
        Extension(
            "onnx2snn._ops",
            sources=["custom_ops/if_neuron.cc", "custom_ops/relux_probe.cc", "custom_ops/event_conv.cc",
                     "custom_ops/spiking_max_pool.cc",
                     "custom_ops/register.cc"],
            depends=["custom_ops/ops.h", "custom_ops/event_conv_image.inc"],   # header edits rebuild too
            language="c++",
        )
    ],
    cmdclass={"build_ext": BuildOps, "bdist_wheel": PlatformWheel},
)
