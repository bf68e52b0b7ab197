"""`onnx2snn optimize`: its flags and what it does."""
from __future__ import annotations

from .options import output_flags
from .output import check_json, emit

NAME = "optimize"


def add(sub) -> None:
    o = sub.add_parser("optimize", help="write an SNN as onnx2snn's sessions run it, for other onnxruntime bindings",
                       description="The converted file with each neuron's bias, residual and time tiling fused "
                                   "into it and, unless --portable-only, onnxruntime's blocked layout for this CPU "
                                   "and onnxruntime version: C, C++, C#, Java and other bindings that load the "
                                   "operator library then run it as fast as onnx2snn's own sessions, with the "
                                   "same outputs. The blocked file suits this onnxruntime version and CPU only "
                                   "(recorded in its metadata; load it with graph optimizations disabled). Keep "
                                   "the converted file for eval, inspect and export-nir (docs/guide/deploying.md).")
    o.add_argument("snn", help="an SNN written by onnx2snn (.onnx)")
    o.add_argument("-o", "--output", help="the optimized file (default: the SNN's name with .opt.onnx)")
    o.add_argument("--portable-only", action="store_true",
                   help="only the fused neuron inputs: a file for any CPU and any onnxruntime that loads the "
                        "operator library")
    output_flags(o, "the optimized file's path", "what was written (file, rewrites, onnxruntime and CPU block)")


def command(args) -> int:
    from .. import api
    from pathlib import Path
    out = args.output or str(Path(args.snn).with_suffix(".opt.onnx"))
    check_json(args, [(args.snn, "the SNN")], [(out, "-o")])
    made = api.optimize_file(args.snn, out, args.portable_only)
    target = (f" for onnxruntime {made['onnxruntime']} on {made['machine']} ({made['block']}-channel blocks)"
              if "blocked" in made["rewrites"] else " for any CPU and onnxruntime")
    emit(args, made, made["path"] if args.quiet else f"wrote {made['path']}: {' + '.join(made['rewrites'])}{target}")
    return 0
