"""What every command does with its result: -q, --json [FILE] (checked before any work, written
atomically) and the text, with one meaning on every command."""
from __future__ import annotations

from ..errors import UserError


def quiet(args) -> bool:
    """-q, or --json to stdout (where the JSON is all that is printed)."""
    return args.quiet or args.json == "-"


def progress(args) -> bool:
    """Progress bars (and a cluster's notes) unless -q or --json (any form: output for machines)."""
    return not (args.quiet or args.json)


def say(args):
    """Where a cluster's notes go: printed with the progress bars (_progress)."""
    return (lambda text: print(text, flush=True)) if progress(args) else (lambda text: None)


def check_json(args, inputs=(), outputs=()) -> None:
    """--json FILE checked before any work, as every output is: not one of the command's `inputs`
    ((path, flag) pairs), nor any of its other `outputs`."""
    from pathlib import Path

    from ..files import Files
    if args.json in (None, "-"):
        return
    files = Files()
    for path, flag in inputs:
        if path and flag == "--data-loader":          # FILE.py:FN names a file
            path = str(path).rpartition(":")[0] or str(path)
        if path and Path(path).exists():
            files.input(path, flag, folder_ok=True)
    files.output(args.json, "--json")
    for path, flag in outputs:
        if path and Path(path).resolve() == Path(args.json).resolve():
            raise UserError(f"--json {args.json}: is also the {flag} output")


def emit(args, payload: dict, text=None) -> None:
    """The command's result: JSON on stdout (--json alone or -), else `text` unless it is None,
    and the JSON written to --json FILE."""
    import json

    from ..files import write_atomic
    encoded = json.dumps(payload, indent=1, sort_keys=True)
    if args.json == "-":
        print(encoded)
        return
    if args.json:
        write_atomic(args.json, encoded.encode(), "--json")
    if text is not None:
        print(text)


def data_inputs(args) -> list:
    return [(args.data, "--data"), (args.data_loader, "--data-loader"), (args.annotations, "--annotations")]


def written(args, arrays: dict) -> None:
    """What run and run-nir wrote."""
    payload = {"output": args.output, "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                                                  for k, v in arrays.items()}}
    emit(args, payload, args.output if args.quiet else
          f"wrote {', '.join(f'{k} {list(v.shape)}' for k, v in arrays.items())} to {args.output}")
