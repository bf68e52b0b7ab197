"""Command line: `onnx2snn MODEL --data DIR` (convert), `eval`, `run`, `optimize`, `inspect`,
`export-nir`, `run-nir`, `demo`.

    parser.py    the top-level parser; each command's module adds its subparser
    convert.py, evaluate.py, run.py, optimize.py, inspection.py, export_nir.py, run_nir.py, demo.py
                 one module per command: its flags (`add`) and what it does (`command`)
    options.py   flag groups several commands share (data, scaling out, memory, output), with the
                 defaults read from the config dataclasses
    output.py    -q, --json [FILE] and the text: what a command does with its result

Importing this package is cheap (argparse and the config only); the library is imported inside
the commands, so `--help` is fast and Ctrl-C during start-up ends with one line like any other.
"""
from __future__ import annotations

import logging
import sys
import traceback

from ..errors import InternalError, UserError, render
from .options import flag_of
from .convert import configs
from .parser import MODULES, build_parser

__all__ = ["COMMANDS", "build_parser", "configs", "main"]

COMMANDS = tuple(m.NAME for m in MODULES)


def main(argv=None) -> int:
    """Exit code 0 on success, 1 on any error (one line on stderr), 130 on Ctrl-C."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("onnx2snn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:          # the reader went away (`| head`): stop quietly, as a pipe stage does
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv = ["convert"] + argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 1
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    command = {m.NAME: m.command for m in MODULES}[args.command]
    try:
        from ..graph.onnx_io import onnxruntime_logging
        onnxruntime_logging(verbose)             # onnxruntime's own warnings only with -v
        return command(args)
    except UserError as err:
        if verbose:
            traceback.print_exc()
        print(f"onnx2snn: error: {render(err.template, flag_of)}", file=sys.stderr)   # parameters as flags
        return 1
    except (KeyboardInterrupt, SystemExit, BrokenPipeError):
        raise
    except InternalError as err:   # onnx2snn contradicted itself: its message names the step and node
        if verbose:
            traceback.print_exc()
        print(f"onnx2snn: error: internal error in {render(err.template, flag_of)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("onnx2snn: error: out of memory; use a smaller --batch-size or fewer timesteps", file=sys.stderr)
        return 1
    except Exception as err:  # a bug: one line by default, the traceback with -v
        if verbose:
            traceback.print_exc()
        first = (str(err).strip().splitlines() or [""])[0][:300]
        print(f"onnx2snn: error: internal error ({type(err).__name__}: {first}); rerun with -v for the "
              "traceback and report it", file=sys.stderr)
        return 1
