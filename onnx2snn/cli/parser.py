"""The command line's parser: the top level and one subparser per command, each declared by its
own module (convert.py, evaluate.py, run.py, optimize.py, inspection.py, export_nir.py, run_nir.py,
demo.py)."""
from __future__ import annotations

import argparse

from .._version import __version__
from . import convert, demo, evaluate, export_nir, inspection, optimize, run, run_nir

# the subcommands in the order `--help` lists them; each module has NAME, add(sub) and command(args)
MODULES = (convert, evaluate, run, optimize, inspection, export_nir, run_nir, demo)


class _Parser(argparse.ArgumentParser):
    """argparse with the house rule for user errors: one line on stderr, exit code 1."""

    def error(self, message):
        self.exit(1, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="onnx2snn",
        description="Convert a trained ReLU network (ONNX, any framework) into a spiking network of "
                    "integrate-and-fire neurons that runs in onnxruntime. Training-free: thresholds "
                    "come from calibration data (local threshold balancing).",
        epilog="Run `onnx2snn COMMAND --help` for a command's flags. `onnx2snn MODEL ...` means "
               "`onnx2snn convert MODEL ...`.")
    p.add_argument("--version", action="version", version=f"onnx2snn {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in MODULES:
        module.add(sub)
    return p
