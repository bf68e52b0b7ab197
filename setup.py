"""Build the IF-neuron operator library (custom_ops/) and bundle it in the onnx2snn package.

The library uses only onnxruntime's C/C++ API headers and does not link libonnxruntime; see
custom_ops/build_support.py for how the headers are found.
"""
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent / "custom_ops"))
from build_support import check_compiler, find_onnxruntime_headers  # noqa: E402


class BuildOps(build_ext):
    """Compile custom_ops/ into onnx2snn/_ops*.so with the flags the bit-exactness contract needs."""

    def build_extensions(self):
        check_compiler()
        include = find_onnxruntime_headers()
        for ext in self.extensions:
            ext.include_dirs.append(str(include))
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "onnx2snn._ops",
            sources=["custom_ops/if_neuron.cc", "custom_ops/relux_probe.cc", "custom_ops/event_conv.cc",
                     "custom_ops/spiking_max_pool.cc",
                     "custom_ops/register.cc"],
            language="c++",
            extra_compile_args=["-std=c++17", "-O3", "-ffp-contract=off", "-fno-trapping-math", "-fvisibility=hidden"],
        )
    ],
    cmdclass={"build_ext": BuildOps},
)
