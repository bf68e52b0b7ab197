"""`onnx2snn export-nir`: its flags and what it does."""
from __future__ import annotations

from ..errors import UserError
from .options import output_flags
from .output import check_json, emit, quiet

NAME = "export-nir"


def add(sub) -> None:
    x = sub.add_parser("export-nir", help="write a converted SNN as a NIR graph (neuromorphic toolchains)",
                       description="The SNN (unrolled form, without --portable) from its input to the readout as "
                                   "a NIR file; what runs on the host is written beside it as small ONNX files "
                                   "(docs/guide/nir.md).")
    x.add_argument("snn", help="an SNN written by onnx2snn (.onnx)")
    x.add_argument("-o", "--output", help="the NIR file (default: the SNN's name with .nir)")
    x.add_argument("--target", choices=["speck"],
                   help="also quantise and check against a chip's limits (speck: SynSense Speck / DYNAP-CNN, "
                        "8-bit weights; needs sinabs for the memory check); exit code 1 when it does not fit")
    output_flags(x, "the NIR file's path", "the export (files written, nodes, T and D, input coding, host parts)")


def command(args) -> int:
    from .. import api
    from ..files import Files
    from ..nir import files as nf
    files = Files()
    files.input(args.snn, "the SNN")
    out = args.output or (args.snn[:-5] if args.snn.endswith(".onnx") else args.snn) + ".nir"
    if out.endswith(".snn.nir"):
        out = out[:-8] + ".nir"
    nf.check_outputs(files, out, "-o")
    check_json(args, [(args.snn, "the SNN")], [(out, "-o")] + [(p, "-o") for p in nf.host_paths(out).values()])
    snn = api.load_snn(args.snn)
    graph, info, written, report = nf.export_file(snn, out, args.target)
    if report is not None:
        if not quiet(args):
            print(report.text())
        if report.fits is None:
            raise UserError(f"--target speck: the layer rules hold but the memory was {report.memory_note} "
                            "(pip install --no-deps sinabs: its validator needs only numpy); nothing written")
        if report.fits is False:
            where = "run without -q or --json to list them" if quiet(args) else "listed above"
            raise UserError(f"--target speck: does not fit Speck ({len(report.all_problems)} problem(s), {where}); "
                            "nothing written")
    payload = {"output": str(written["nir"]),
               "host_pre": str(written["host_pre"]) if written.get("host_pre") else None,
               "host_head": str(written["host_head"]) if written.get("host_head") else None,
               "nodes": nf.node_counts(graph), "timesteps": info["timesteps"], "delay": info["delay"],
               "input_coding": info["input_coding"], "host": info["host"],
               "speck": None if report is None else {"fits": report.fits, "problems": len(report.all_problems)}}
    emit(args, payload, str(written["nir"]) if args.quiet else nf.summary(graph, info, written))
    return 0
