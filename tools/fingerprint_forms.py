"""Fingerprints of a conversion in every graph form, to show a refactoring changes no output.

    python tools/fingerprint_forms.py --model ../shared/bench/models/vgg7_pool_cifar10.onnx \\
        --val ../shared/bench/cifar10/val --mean 0.4914,0.4822,0.4465 --std 0.2470,0.2435,0.2616 \\
        --thresholds vgg7_th.json [--json before.json]

For fixed thresholds, each form (unrolled, portable, loop, chunked, early exit, --maxpool move) is
built at T=16, D=3 and run on 8 validation images; it prints the SHA-256 of the outputs' bytes and
of the graph (metadata left out). Run it before and after a change and compare the files.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from benchcommon import parser

from onnx2snn import SNNConfig, Thresholds, runtime, to_snn
from onnx2snn import data as D
from onnx2snn.analyse import analyse

FORMS = [dict(form="unrolled"), dict(form="unrolled", portable=True), dict(form="loop"),
         dict(form="loop", chunk=8), dict(form="loop", chunk=5, portable=True),
         dict(form="loop", chunk=8, early_exit=True), dict(form="unrolled", maxpool="move")]


def main():
    p = parser(__doc__)
    p.add_argument("--thresholds", required=True)
    p.add_argument("--json")
    args = p.parse_args()
    analysis = analyse(args.model)
    th = Thresholds.load(args.thresholds)
    val = D.open_data(args.val, None, D.model_inputs(analysis.model), D.Preprocess(args.mean, args.std))
    feeds, _ = val.batch(list(range(0, len(val), max(1, len(val) // 8)))[:8])
    result = {}
    for kw in FORMS:
        snn, _ = to_snn(analysis, th, SNNConfig(timesteps=16, delay=3, **kw))
        outs = runtime.session(snn).run(None, feeds)
        graph = onnx.ModelProto()
        graph.CopyFrom(snn)
        del graph.metadata_props[:]
        key = json.dumps(kw, sort_keys=True)
        result[key] = {"outputs": hashlib.sha256(b"".join(np.ascontiguousarray(o).tobytes() for o in outs)).hexdigest(),
                       "graph": hashlib.sha256(graph.graph.SerializeToString()).hexdigest()}
        print(f"{key:55} outputs {result[key]['outputs'][:16]}  graph {result[key]['graph'][:16]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
