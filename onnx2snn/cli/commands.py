"""What each subcommand does with its parsed arguments: calls into api.py (and nir/) and prints.
The library is imported here, inside the functions, so that the parser stays cheap to import."""
from __future__ import annotations

from ..config import CalibConfig, SNNConfig, check_energy
from ..errors import UserError
from .parser import _int_list


def _quiet(args) -> bool:
    """-q, or --json to stdout (where the JSON is all that is printed)."""
    return args.quiet or args.json == "-"


def _progress(args) -> bool:
    """Progress bars (and a cluster's notes) unless -q or --json (any form: output for machines)."""
    return not (args.quiet or args.json)


def _say(args):
    """Where a cluster's notes go: printed with the progress bars (_progress)."""
    return (lambda text: print(text, flush=True)) if _progress(args) else (lambda text: None)


def _check_json(args, inputs=(), outputs=()) -> None:
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


def _emit(args, payload: dict, text=None) -> None:
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


def _data_inputs(args) -> list:
    return [(args.data, "--data"), (args.data_loader, "--data-loader"), (args.annotations, "--annotations")]


def _prep(args, recorded=None):
    from .. import data as D
    mean = D.parse_floats(args.mean, "--mean")
    std = D.parse_floats(args.std, "--std")
    size = tuple(_int_list(args.size, "--size")) if args.size else None
    if size is not None and len(size) != 2:
        raise UserError(f"--size {args.size}: expected H,W")
    base = recorded or D.Preprocess()
    crop = tuple(_int_list(args.crop, "--crop")) if args.crop else None
    if crop is not None and len(crop) not in (1, 2):
        raise UserError(f"--crop {args.crop}: expected H,W or one number")
    crop = crop * 2 if crop is not None and len(crop) == 1 else crop
    return D.Preprocess(mean or base.mean, std or base.std, size or base.size, args.layout or base.layout,
                        args.resize or base.resize, crop or base.crop)


def configs(args) -> tuple:
    """(CalibConfig, SNNConfig) of parsed `convert` arguments, data-dependent defaults resolved."""
    from .. import api
    calib = CalibConfig(method=args.method, iters=args.iters, batch_size=args.batch_size, lr=args.lr,
                        percentile=args.percentile, seed=args.seed, augment=args.augment,
                        skip_nonfinite=args.skip_nonfinite, tune=args.tune, round_batches=args.round_batches)
    auto = api.data_defaults(bool(args.data or args.data_loader), args.thresholds, args.timesteps)
    snn = SNNConfig(timesteps=args.timesteps, delay=auto["delay"] if args.delay is None else args.delay,
                    v_init=args.v_init, maxpool=args.maxpool, form=args.form, chunk=args.chunk,
                    portable=args.portable, portable_steps=args.portable_steps, early_exit=args.early_exit,
                    exit_stable=args.exit_stable,
                    exit_margin=args.exit_margin, exit_min_steps=args.exit_min_steps,
                    keep_analog=args.keep_analog, loop_op=args.loop_op, correct=args.correct or auto["correct"],
                    spikes=args.spikes, signed=args.signed)
    return calib, snn


def convert(args) -> int:
    from .. import api
    from ..evaluate.report import eval_table, layers_table, report_lines
    from ..snn.info import SNNInfo
    calib, snn = configs(args)
    _check_json(args, [(args.model, "the model"), (args.thresholds, "--thresholds")] + _data_inputs(args),
                [(args.output or api.default_output(args.model), "-o"), (args.save_thresholds, "--save-thresholds"),
                 (args.report, "--report"), (args.nir, "--nir")])
    result = api.convert(
        args.model, data=args.data, data_loader=args.data_loader, output=args.output, calib=calib, snn=snn,
        prep=_prep(args), thresholds=args.thresholds, save_thresholds=args.save_thresholds,
        check_samples=args.check if (args.data or args.data_loader) else 0, progress=_progress(args),
        delay_samples=args.delay_samples, report_path=args.report, plot_dir=args.plot,
        correct_samples=args.correct_samples, max_memory=args.max_memory, freeze_norm=args.freeze_norm,
        freeze_samples=args.freeze_samples, annotations=args.annotations, split=args.split,
        nir=args.nir, workers=args.workers, cluster=args.cluster, say=_say(args))
    _emit(args, result.to_json())
    if not _quiet(args):
        th = result.thresholds
        how = (f"{th.info.get('iters')} batches in {result.calibration_seconds:.1f}s" if args.thresholds is None
               else f"thresholds from {args.thresholds}")
        form = args.form + (f", chunk {args.chunk}" if args.form == "loop" else "") + \
            (", portable" if args.portable else "") + (", early exit" if args.early_exit else "") + \
            (f", {args.spikes} spikes" if args.spikes != "binary" else "") + (", signed" if args.signed else "")
        print(f"converted {args.model} -> {result.output}  ({form}, T={args.timesteps}, "
              f"method {th.method}, {how})")
        print(f"memory budget {result.memory.describe()}; samples per batch: "
              + ", ".join(f"{k} {v}" for k, v in result.batches.items()))
        if result.frozen is not None and result.frozen.layers:
            f = result.frozen
            print(f"froze {len(f.layers)} normalisation layer(s) on {f.samples} samples (--freeze-norm); relative "
                  "error each adds: " + ", ".join(f"{d['name']} {d['rel_error']:.4f}" for d in f.layers)
                  + (f"; the frozen ANN's output vs the ANN's: {f.output_rel_error:.4f}"
                     if f.output_rel_error is not None else ""))
        tune = result.thresholds.info.get("tune")
        if tune:
            print(f"calibration length chosen for T={args.timesteps}: {tune['iters']} batches "
                  f"(relative output error by batches: {tune['rel_error']})")
        fix = result.thresholds.info.get("correction")
        if fix:
            took = result.step_seconds.get("correction")
            print(f"{fix['kind']} correction at T={fix['timesteps']} on {fix['samples']} samples"
                  + (f" in {took:.1f}s" if took else " (from --thresholds)") + " (mean |ANN - SNN| before each step: "
                  + ", ".join(f"{s['kind']} {s['mean_abs_difference']:.4f}" for s in fix["steps"]) + ")"
                  + ("" if result.delay is not None else f"; readout delay D={snn.delay}"))
        if result.delay is not None:
            c = result.delay
            print(f"delay D={c.delay} chosen on {c.samples} samples: relative output error vs the ANN "
                  f"{c.rel_error.get(c.delay, 0):.4f} (D=0: {c.rel_error.get(0, 0):.4f})")
        print(layers_table(result.layers))
        analog = SNNInfo.from_metadata(result.snn).analog
        if analog:
            print(f"kept analog (not spiking, --keep-analog): {', '.join(analog)}")
        if result.check is not None:
            print("\ncheck on calibration samples (SNN vs ANN):")
            print(eval_table(result.check))
        if result.report is not None:
            print(report_lines(result.report))
        if args.nir:
            print(f"NIR graph: {args.nir} (host parts beside it, if any; see export-nir)")
    elif args.json != "-":
        print(result.output)
    return 0


def _delay_flag(value):
    if value is None or value == "auto":
        return value
    try:
        d = int(value)
    except ValueError:
        raise UserError(f"--delay {value}: expected an integer >= 0 or auto") from None
    if d < 0:
        raise UserError(f"--delay {value}: expected an integer >= 0 or auto")
    return d


def evaluate(args) -> int:
    from .. import api
    from ..evaluate.report import delay_line, eval_table, report_lines
    from ..snn.info import SNNInfo
    check_energy(args.e_sop, args.e_mac)
    snn = api.load_snn(args.snn)
    prep = _prep(args, api.recorded_preprocess(snn))
    result = api.evaluate_file(args.snn, args.data, args.data_loader, args.ann,
                               _int_list(args.timesteps, "--timesteps") if args.timesteps else None,
                               args.batch_size, args.limit, prep, progress=_progress(args),
                               json_path=None if args.json == "-" else args.json,
                               report_path=args.report, plot_dir=args.plot, e_sop=args.e_sop, e_mac=args.e_mac,
                               max_memory=args.max_memory, task=args.task, annotations=args.annotations,
                               decode=args.decode, split=args.split, delay=_delay_flag(args.delay),
                               workers=args.workers, cluster=args.cluster,
                               say=_say(args))
    if args.json == "-":
        _emit(args, result.to_json())
        return 0
    if not args.quiet:
        print(delay_line(result, SNNInfo.from_metadata(snn)))
        if result.task:
            print(f"task: {result.task} ({result.task_reason})")
        over = result.sample_bytes and not result.memory.fits(result.sample_bytes)
        print(f"memory budget {result.memory.describe()}: {result.batch_size} samples per simulation batch"
              + (" (--batch-size)" if args.batch_size else "")
              + (f"; one sample does not fit at T={max(r['T'] for r in result.rows)}: the unrolled simulation "
                 f"runs {result.slice_steps} steps at a time" if result.slice_steps else "")
              + (f"; one sample is estimated at {result.sample_bytes / 2 ** 30:.1f} GiB, above the budget (a model "
                 "converted with --form loop needs memory independent of T)" if over else ""))
    print(eval_table(result, args.e_sop, args.e_mac))
    if result.report is not None:
        print(report_lines(result.report))
    return 0


def run(args) -> int:
    from .. import api
    snn = api.load_snn(args.snn)
    _check_json(args, [(args.snn, "the SNN")] + _data_inputs(args), [(args.output, "-o")])
    arrays = api.run_file(args.snn, args.output, args.data, args.data_loader, args.batch_size, args.limit,
                          _prep(args, api.recorded_preprocess(snn)), runtime_name=args.runtime,
                          max_memory=args.max_memory, annotations=args.annotations, split=args.split,
                          workers=args.workers, cluster=args.cluster, say=_say(args))
    _written(args, arrays)
    return 0


def _written(args, arrays: dict) -> None:
    """What run and run-nir wrote."""
    payload = {"output": args.output, "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                                                  for k, v in arrays.items()}}
    _emit(args, payload, args.output if args.quiet else
          f"wrote {', '.join(f'{k} {list(v.shape)}' for k, v in arrays.items())} to {args.output}")


def inspect(args) -> int:
    from ..evaluate.inspection import inspect_model
    from ..evaluate.report import inspection_text
    _check_json(args, [(args.model, "the model")])
    report = inspect_model(args.model, keep_analog=args.keep_analog, freeze_norm=args.freeze_norm, nir=args.nir)
    _emit(args, report, None if args.quiet else inspection_text(report))
    return 0 if report["convertible"] and (not args.nir or report["nir"]["exportable"]) else 1


def export_nir(args) -> int:
    from .. import api
    from ..files import Files
    from ..nir import files as nf
    files = Files()
    files.input(args.snn, "the SNN")
    out = args.output or (args.snn[:-5] if args.snn.endswith(".onnx") else args.snn) + ".nir"
    if out.endswith(".snn.nir"):
        out = out[:-8] + ".nir"
    nf.check_outputs(files, out, "-o")
    _check_json(args, [(args.snn, "the SNN")], [(out, "-o")] + [(p, "-o") for p in nf.host_paths(out).values()])
    snn = api.load_snn(args.snn)
    graph, info, written, report = nf.export_file(snn, out, args.target)
    if report is not None:
        if not _quiet(args):
            print(report.text())
        if report.fits is None:
            raise UserError(f"--target speck: the layer rules hold but the memory was {report.memory_note} "
                            "(pip install --no-deps sinabs: its validator needs only numpy); nothing written")
        if report.fits is False:
            where = "run without -q or --json to list them" if _quiet(args) else "listed above"
            raise UserError(f"--target speck: does not fit Speck ({len(report.all_problems)} problem(s), {where}); "
                            "nothing written")
    payload = {"output": str(written["nir"]),
               "host_pre": str(written["host_pre"]) if written.get("host_pre") else None,
               "host_head": str(written["host_head"]) if written.get("host_head") else None,
               "nodes": nf.node_counts(graph), "timesteps": info["timesteps"], "delay": info["delay"],
               "input_coding": info["input_coding"], "host": info["host"],
               "speck": None if report is None else {"fits": report.fits, "problems": len(report.all_problems)}}
    _emit(args, payload, str(written["nir"]) if args.quiet else nf.summary(graph, info, written))
    return 0


def run_nir(args) -> int:
    from .. import api
    arrays = api.run_nir_file(args.nir, args.output, args.data, args.data_loader, args.batch_size, args.limit,
                              lambda recorded: _prep(args, recorded), args.timesteps, args.delay, args.annotations,
                              args.split)
    _written(args, arrays)
    return 0


def demo(args) -> int:
    from . import demo
    _check_json(args, [(demo.MODEL, "the demo model")], [(args.output, "-o")])
    result, evaluation = demo.run(args.output, iters=args.iters, progress=_progress(args))
    _emit(args, {"conversion": result.to_json(), "eval": evaluation.to_json()},
          demo.describe(result, evaluation, quiet=args.quiet))
    return 0
