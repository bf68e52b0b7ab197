"""`onnx2snn run-nir`: its flags and what it does."""
from __future__ import annotations

from .options import OUTPUTS_FILE, data_flags, output_flags, preprocess
from .output import written

NAME = "run-nir"


def add(sub) -> None:
    n = sub.add_parser("run-nir", help="run an exported NIR graph (NumPy reference simulation) on data",
                       description="Same data options and output format as `run`; the host parts beside the .nir "
                                   "run first (and the head after the readout last).")
    n.add_argument("nir", help="a .nir file written by export-nir")
    data_flags(n, "")
    n.add_argument("-o", "--output", default=OUTPUTS_FILE, help=f"output file (.npy or .npz; {OUTPUTS_FILE})")
    n.add_argument("-T", "--timesteps", type=int, help="steps to run (default: the graph's metadata)")
    n.add_argument("-D", "--delay", type=int, help="readout from step D+1 (default: the graph's metadata)")
    n.add_argument("--batch-size", type=int, help="samples per run (32)")
    n.add_argument("--limit", type=int)
    output_flags(n, "the outputs file's path", "what was written (file, outputs and their shapes)")


def command(args) -> int:
    from .. import api
    arrays = api.run_nir_file(args.nir, args.output, args.data, args.data_loader, args.batch_size, args.limit,
                              lambda recorded: preprocess(args, recorded), args.timesteps, args.delay, args.annotations,
                              args.split)
    written(args, arrays)
    return 0
