"""`onnx2snn run`: its flags and what it does."""
from __future__ import annotations

from ..config import RUNTIMES
from .options import OUTPUTS_FILE, cluster_flags, data_flags, memory_flag, output_flags, preprocess
from .output import check_json, data_inputs, say, written

NAME = "run"


def add(sub) -> None:
    r = sub.add_parser("run", help="run an SNN on data and save its outputs",
                       description="Outputs go to .npy (one output) or .npz keyed by output name.")
    r.add_argument("snn")
    data_flags(r, "")
    r.add_argument("-o", "--output", default=OUTPUTS_FILE, help=f"output file (.npy or .npz; {OUTPUTS_FILE})")
    r.add_argument("--batch-size", type=int, help="samples per run (default: sized from the model, see eval)")
    memory_flag(r)
    r.add_argument("--limit", type=int)
    r.add_argument("--runtime", choices=RUNTIMES, default=RUNTIMES[0],
                   help="the runtime to run on (openvino and tract run --portable models; from the "
                        "onnx2snn[runtimes] extra)")
    output_flags(r, "the outputs file's path", "what was written (file, outputs and their shapes)")
    cluster_flags(r)


def command(args) -> int:
    from .. import api
    snn = api.load_snn(args.snn, optimized=True)
    check_json(args, [(args.snn, "the SNN")] + data_inputs(args), [(args.output, "-o")])
    arrays = api.run_file(args.snn, args.output, args.data, args.data_loader, args.batch_size, args.limit,
                          preprocess(args, api.recorded_preprocess(snn)), runtime_name=args.runtime,
                          max_memory=args.max_memory, annotations=args.annotations, split=args.split,
                          workers=args.workers, cluster=args.cluster, say=say(args))
    written(args, arrays)
    return 0
