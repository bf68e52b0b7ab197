"""Wall time of `eval`, `run` and calibration in one process and on local Dask clusters, and whether
their results are identical.

    python tools/bench_cluster.py --model ../shared/bench/models/resnet32_cifar10.onnx \\
        --calib ../shared/bench/cifar10/calib --val ../shared/bench/cifar10/val \\
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --limit 1000 -T 32

Converts the model once (defaults at T, `--iters` calibration batches), then times, in this one run:
- `eval` of `--limit` validation images at T/4, T/2 and T: without a cluster, and with --workers 1
  and 2 (a local Dask cluster, started and stopped inside the timing, as the command does);
- calibration with --round-batches K (`--round-k`, default 4) the same three ways.
Each configuration runs `--repeats` times (default 3), the configurations taking turns, and its
best wall time counts (a VM's noise on one 30-40 s run was seen at +-5-10%). Prints each best time, its
ratio to the single process, and whether every eval JSON and every set of thresholds is
byte-identical to the single process's. The overhead of the cluster path is the ratio of
--workers 1 to no cluster.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchcommon import parser

from onnx2snn import api
from onnx2snn import data as D
from onnx2snn.config import CalibConfig, SNNConfig


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    p = parser(__doc__)
    p.add_argument("--calib", required=True)
    p.add_argument("-T", "--timesteps", type=int, default=32)
    p.add_argument("--limit", type=int, default=1000, help="validation images to evaluate (1000)")
    p.add_argument("--iters", type=int, default=200, help="calibration batches of the converted model and the "
                                                          "calibration timing (200)")
    p.add_argument("--round-k", type=int, default=4, help="--round-batches of the calibration timing (4)")
    p.add_argument("--workers", default="1,2", help="cluster sizes to time (1,2)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each configuration; the best counts (3)")
    args = p.parse_args()
    prep = D.Preprocess(args.mean, args.std)
    sizes = [None] + [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        snn_path = Path(tmp) / "model.snn.onnx"
        convert_s, _ = timed(lambda: api.convert(args.model, data=args.calib, output=snn_path, prep=prep,
                                                 calib=CalibConfig(iters=args.iters),
                                                 snn=SNNConfig(timesteps=args.timesteps, delay="auto",
                                                               correct="both")))
        print(f"{Path(args.model).name}: converted at T={args.timesteps} in {convert_s:.1f}s "
              f"({args.iters} calibration batches)")
        ts = sorted({max(1, args.timesteps // 4), max(1, args.timesteps // 2), args.timesteps})
        ann = api.M.load(args.model)
        source = api.open_source(ann, args.calib, prep=prep)
        config = CalibConfig(iters=args.iters, round_batches=args.round_k)

        def run_eval(workers, out):
            return api.evaluate_file(snn_path, args.val, ann_path=args.model, timesteps=ts, limit=args.limit,
                                     json_path=out, workers=workers)

        def run_calibration(workers):
            from onnx2snn.cluster import connect
            with connect(workers=workers) as engine:
                return api.calibrate(ann, source, config, engine=engine)

        best, same, first = {}, {}, {}
        for _ in range(args.repeats):
            for workers in sizes:
                out = Path(tmp) / f"eval-{workers}.json"
                secs, res = timed(lambda: run_eval(workers, out))
                text = out.read_bytes()
                first.setdefault("eval", (text, res))
                best[("eval", workers)] = min(best.get(("eval", workers), secs), secs)
                same[("eval", workers)] = same.get(("eval", workers), True) and text == first["eval"][0]
                secs, th = timed(lambda: run_calibration(workers))
                values = json.dumps({k: v.tolist() for k, v in sorted(th.values.items())})
                first.setdefault("calibration", values)
                best[("calibration", workers)] = min(best.get(("calibration", workers), secs), secs)
                same[("calibration", workers)] = same.get(("calibration", workers), True) \
                    and values == first["calibration"]
        res = first["eval"][1]
        for what, label in (("eval", f"eval {res.samples} images, T={','.join(map(str, ts))}"),
                            ("calibration", f"calibration, {args.iters} batches, --round-batches {args.round_k}")):
            for workers in sizes:
                secs = best[(what, workers)]
                name = "no cluster" if workers is None else f"--workers {workers}"
                print(f"  {label}: {name:>12}  best of {args.repeats} {secs:7.1f}s  "
                      f"x{secs / best[(what, None)]:.3f} of one process  "
                      f"{'identical' if same[(what, workers)] else 'DIFFERENT'}")
        print(f"  top-1 at T={ts[-1]}: {res.rows[-1]['accuracy']:.4f}")


if __name__ == "__main__":
    main()
