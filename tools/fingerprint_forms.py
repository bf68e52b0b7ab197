"""Fingerprints of a conversion in every graph form and neuron, to notice any change of the outputs.

    python tools/fingerprint_forms.py --model ../shared/bench/models/vgg7_pool_cifar10.onnx \\
        --val ../shared/bench/cifar10/val --mean 0.4914,0.4822,0.4465 --std 0.2470,0.2435,0.2616 \\
        --thresholds tools/fingerprints/vgg7_th.json [--json after.json] [--check tools/fingerprints/vgg7.json]

For fixed thresholds (with their corrections, if the file holds any), each configuration (unrolled,
portable, loop, chunked, early exit, --maxpool move, burst and signed neurons, corrections dropped)
is built at T=16, D=3 and run on 8 validation images; it prints the SHA-256 of the outputs' bytes
and of the graph (metadata left out).

`--check PINNED` compares with a file written by `--json` and exits 1 when an output changed. The
outputs' bytes depend on the CPU's kernels and onnxruntime's version as well as on onnx2snn, so a
pinned file records both; on another CPU or onnxruntime the comparison is printed but does not fail
(exit 0, "not comparable"). Pinned files of the bench models: tools/fingerprints/ (CHANGELOG.md says
when they changed and why).
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from benchcommon import parser

from onnx2snn import SNNConfig, Thresholds, runtime, to_snn
from onnx2snn import data as D
from onnx2snn.graph.analyse import analyse
from onnx2snn.fit.correction import without

CONFIGS = [dict(form="unrolled"), dict(form="unrolled", portable=True), dict(form="loop"),
           dict(form="loop", chunk=8), dict(form="loop", chunk=5, portable=True),
           dict(form="loop", chunk=8, early_exit=True), dict(form="unrolled", maxpool="move"),
           dict(form="unrolled", spikes="burst:2"), dict(form="unrolled", signed=True),
           dict(form="loop", chunk=8, spikes="burst:4", signed=True), dict(form="unrolled", correct="none")]
_ISA = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "fma", "neon", "asimd")


def environment() -> dict:
    """What the outputs' bytes depend on besides onnx2snn: onnxruntime, the CPU and its instruction sets."""
    flags, name = set(), platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                flags = set(value.split())
            elif key.strip() == "model name":
                name = value.strip()
    except OSError:
        pass
    return {"onnxruntime": ort.__version__, "machine": platform.machine(), "cpu": name,
            "isa": sorted(f for f in _ISA if f in flags)}


def fingerprints(model_path, thresholds: Thresholds, feeds: dict) -> dict:
    """Configuration (JSON) -> {"outputs": SHA-256 of the outputs' bytes, "graph": of the graph}."""
    analysis = analyse(model_path)
    result = {}
    for kw in CONFIGS:
        th = without(thresholds) if kw.get("correct") == "none" else thresholds
        snn, _ = to_snn(analysis, th, SNNConfig(timesteps=16, delay=3, **kw))
        outs = runtime.session(snn).run(None, feeds)
        graph = onnx.ModelProto()
        graph.CopyFrom(snn)
        del graph.metadata_props[:]
        result[json.dumps(kw, sort_keys=True)] = {
            "outputs": hashlib.sha256(b"".join(np.ascontiguousarray(o).tobytes() for o in outs)).hexdigest(),
            "graph": hashlib.sha256(graph.graph.SerializeToString()).hexdigest()}
    return result


def compare(now: dict, pinned: dict) -> tuple:
    """(configurations whose outputs changed, whose graph alone changed, missing from either side)."""
    keys = set(now["forms"]) | set(pinned["forms"])
    missing = sorted(k for k in keys if k not in now["forms"] or k not in pinned["forms"])
    both = sorted(keys - set(missing))
    outputs = [k for k in both if now["forms"][k]["outputs"] != pinned["forms"][k]["outputs"]]
    graphs = [k for k in both if k not in outputs and now["forms"][k]["graph"] != pinned["forms"][k]["graph"]]
    return outputs, graphs, missing


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--thresholds", required=True)
    p.add_argument("--json", help="write the fingerprints (and the environment) here")
    p.add_argument("--check", metavar="PINNED", help="compare with a pinned file; exit 1 when an output changed")
    args = p.parse_args()
    model = analyse(args.model).model
    th = Thresholds.load(args.thresholds)
    val = D.open_data(args.val, None, D.model_inputs(model), D.Preprocess(args.mean, args.std))
    feeds, _ = val.batch(list(range(0, len(val), max(1, len(val) // 8)))[:8])
    now = {"model": Path(args.model).name, "environment": environment(),
           "forms": fingerprints(args.model, th, feeds)}
    for key, f in now["forms"].items():
        print(f"{key:62} outputs {f['outputs'][:16]}  graph {f['graph'][:16]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    if not args.check:
        return 0
    pinned = json.loads(Path(args.check).read_text())
    outputs, graphs, missing = compare(now, pinned)
    comparable = pinned.get("environment") == now["environment"]
    for k in outputs:
        print(f"outputs changed: {k}")
    for k in graphs:
        print(f"graph changed, outputs the same: {k}")
    for k in missing:
        print(f"only on one side: {k}")
    if not (outputs or graphs or missing):
        print(f"fingerprints: all {len(now['forms'])} configurations as pinned in {args.check}")
        return 0
    if not comparable:
        print(f"fingerprints: not comparable: pinned on {pinned.get('environment')}, this is {now['environment']}")
        return 0
    print(f"fingerprints: {len(outputs)} of {len(now['forms'])} configurations' outputs differ from {args.check}; "
          "if intended, say so in CHANGELOG.md and pin the new ones (--json)")
    return 1 if outputs or missing else 0


if __name__ == "__main__":
    sys.exit(main())
