"""Flag groups shared by the subcommands, each declared once: data, scaling out, memory and the
output flags every command takes; defaults come from the config dataclasses (`default_of`)."""
from __future__ import annotations

import argparse
import dataclasses

from ..errors import UserError


# the library's parameters whose flag is not `--` + the name with dashes (errors.param)
_FLAGS = {"output": "-o", "check_samples": "--check", "report_path": "--report", "plot_dir": "--plot",
          "json_path": "--json", "runtime_name": "--runtime"}


def flag_of(name: str) -> str:
    """The command line's flag for a library parameter an error names (errors.param)."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def default_of(config: type, name: str):
    """The default of field `name` of a config dataclass: the one source of a flag's default."""
    for f in dataclasses.fields(config):
        if f.name == name:
            return f.default
    raise KeyError(f"{config.__name__} has no field {name!r}")


def int_list(text: str, flag: str):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} {text}: expected positive integers")
    return values


def data_flags(p: argparse.ArgumentParser, required_note: str):
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH",
                   help="folder of images (class sub-folders give labels, sorted names -> class index), "
                        "a .npy/.npz file, or a folder of them (arrays keyed by input name or one array; "
                        "labels under 'y'). " + required_note)
    g.add_argument("--data-loader", metavar="FILE.py:FN",
                   help="a Python function returning an iterable of feed dicts (one batch each, labels under 'y')")
    g.add_argument("--mean", help="per-channel mean on the [0,1] scale, comma list (images only)")
    g.add_argument("--std", help="per-channel std on the [0,1] scale, comma list (images only)")
    g.add_argument("--size", help="H,W to resize images to (default: the model's input shape)")
    g.add_argument("--layout", choices=["NCHW", "NHWC"], help="image layout (default: from the model's input shape)")
    g.add_argument("--resize", type=int, metavar="PIXELS",
                   help="resize the shorter side of each image to PIXELS, then center-crop to the model's input "
                        "(or --crop); e.g. --resize 256 for ImageNet-style 224 crops")
    g.add_argument("--crop", metavar="H,W", help="center crop after --resize (one number: square)")
    g.add_argument("--annotations", metavar="FILE.json",
                   help="COCO-format boxes; --data is then the image folder it names (detection)")
    g.add_argument("--split", metavar="NAME",
                   help="a Pascal VOC root's ImageSets/Segmentation/NAME.txt (default: every image with a mask)")


def cluster_flags(p: argparse.ArgumentParser):
    g = p.add_argument_group("scaling out (docs/guide/scaling-out.md; the same results as one process)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="run the batches on a local Dask cluster of N worker processes (the onnx2snn[dask] extra)")
    g.add_argument("--cluster", metavar="ADDRESS",
                   help="run the batches on an existing cluster: a Dask scheduler (tcp://HOST:8786), Ray "
                        "(ray://HOST:10001, or ray:auto: RAY_ADDRESS or a local Ray; the onnx2snn[ray] extra)")


OUTPUTS_FILE = "outputs.npz"      # run and run-nir write here unless -o says otherwise
MAX_MEMORY_HELP = ("memory the runs may use, e.g. 8G or 512M (default: half of the memory available); batch sizes "
                   "are chosen to fit and printed")


def memory_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-memory", metavar="SIZE", help=MAX_MEMORY_HELP)


def output_flags(p: argparse.ArgumentParser, quiet: str, json: str):
    """-v, -q and --json, the same three on every command with the same meaning: `quiet` says what
    -q still prints, `json` what --json holds."""
    g = p.add_argument_group("output (every command)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="log details, onnxruntime's own warnings and, on an error, the traceback")
    g.add_argument("-q", "--quiet", action="store_true", help=f"no progress bars or tables: print only {quiet}")
    g.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help=f"{json} as JSON: written to FILE (atomically), or, with no FILE or '-', printed to stdout "
                        "instead of the text; no progress bars")


def preprocess(args, recorded=None):
    from .. import data as D
    mean = D.parse_floats(args.mean, "--mean")
    std = D.parse_floats(args.std, "--std")
    size = tuple(int_list(args.size, "--size")) if args.size else None
    if size is not None and len(size) != 2:
        raise UserError(f"--size {args.size}: expected H,W")
    base = recorded or D.Preprocess()
    crop = tuple(int_list(args.crop, "--crop")) if args.crop else None
    if crop is not None and len(crop) not in (1, 2):
        raise UserError(f"--crop {args.crop}: expected H,W or one number")
    crop = crop * 2 if crop is not None and len(crop) == 1 else crop
    return D.Preprocess(mean or base.mean, std or base.std, size or base.size, args.layout or base.layout,
                        args.resize or base.resize, crop or base.crop)
