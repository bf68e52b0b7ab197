"""A conversion's steps, in the order `run` takes them: load, freeze, calibrate, fit, build, write,
nir, check. Each reads the context (context.py) and adds what it makes; `run` times each one.

    load       the flags checked, every path checked against every other, the model loaded and
               analysed (refused early when nothing converts), the data source opened, the form and
               the NIR export checked before any calibration
    freeze     --freeze-norm: normalisation layers become fixed affines from calibration data
    calibrate  thresholds from data (or reused from --thresholds), --tune auto's snapshot
    fit        the corrections and the readout delay for T (fit/steps.py)
    build      the SNN in the form asked for
    write      the SNN and the thresholds, atomically
    nir        --nir: the SNN as a NIR graph
    check      the SNN against the ANN on calibration samples at T/4, T/2, T (--check)
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from .. import data as D
from .. import freeze as fr
from .. import runtime, tasks
from ..calibration import balancing as cal
from ..calibration.thresholds import Thresholds
from ..config import AUTO, CalibConfig, SNNConfig
from ..data import batches as Bt
from ..data.plan import BatchPlan
from ..errors import UserError, param
from ..evaluate import evaluation as ev
from ..evaluate.report import check_report_outputs, write_report
from ..files import write_atomic
from ..fit.steps import batches_used, correct_and_delay, data_defaults, simulation_batches
from ..fit.tuning import choose_snapshot, snapshot_points
from ..graph import onnx_io as M
from ..graph.analyse import analyse, as_analysis, check_shapes
from ..runtime.memory import MemoryBudget
from ..snn import check as check_form
from ..snn import to_snn
from ..snn.info import Provenance, SNNInfo
from .context import Context, default_output, first_batch, open_source
from .result import Conversion

log = logging.getLogger(__name__)


def positive(value, flag: str) -> None:
    """None, or an integer >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"{flag} {value}: must be an integer >= 1")


# ---- load -----------------------------------------------------------------------------------------

def _check_request(ctx: Context) -> None:
    """The arguments, before any file is read."""
    r = ctx.request
    if ctx.snn.delay == AUTO and not r.has_data:
        raise UserError(f"{param('delay')} auto: needs {param('data')} (or {param('data_loader')}) to choose the delay "
                        f"from")
    if r.freeze_norm and not r.has_data:
        raise UserError(f"{param('freeze_norm')}: needs {param('data')} (or {param('data_loader')}) to measure the "
                        f"statistics on")
    positive(r.correct_samples, param("correct_samples"))
    if isinstance(r.delay_samples, bool) or not isinstance(r.delay_samples, int) or r.delay_samples < 1:
        raise UserError(f"{param('delay_samples')} {r.delay_samples}: must be an integer >= 1")
    if isinstance(r.check_samples, bool) or not isinstance(r.check_samples, int) or r.check_samples < 0:
        raise UserError(f"{param('check_samples')} {r.check_samples}: must be an integer >= 0")


def _check_files(ctx: Context) -> None:
    """Every output against every input, before any work: nothing the user has is overwritten."""
    r, files = ctx.request, ctx.files
    if r.write:
        files.output(ctx.out_path, param("output"))
    if r.save_thresholds:
        files.output(r.save_thresholds, param("save_thresholds"))
        if r.write and Path(r.save_thresholds).resolve() == ctx.out_path.resolve():
            raise UserError(f"{param('save_thresholds')} {r.save_thresholds}: is also the {param('output')} output")
    if (r.report_path or r.plot_dir) and not (r.check_samples and ctx.source is not None):
        raise UserError(f"{param('report_path')}/{param('plot_dir')} describe the check after converting: they need "
                        f"{param('data')} and {param('check_samples')} N > 0")
    check_report_outputs(files, r.report_path, r.plot_dir)
    if r.nir:
        from ..nir.files import check_outputs
        check_outputs(files, r.nir, param("nir"),
                      [p for p in (ctx.out_path if r.write else None, r.save_thresholds, r.report_path) if p])


def load(ctx: Context) -> None:
    r = ctx.request
    if ctx.snn is None:
        ctx.snn = SNNConfig(**data_defaults(r.has_data, r.thresholds))
    _check_request(ctx)
    ctx.files.input(r.model_path, "the model")
    if r.thresholds is not None and not isinstance(r.thresholds, Thresholds):
        ctx.files.input(r.thresholds, param("thresholds"))
    ctx.model = M.load(r.model_path)
    if r.has_data:
        ctx.source = open_source(ctx.model, r.data, r.data_loader, r.prep, ctx.files, r.annotations, r.split)
    ctx.out_path = Path(r.output) if r.output else default_output(r.model_path)
    _check_files(ctx)
    ctx.analysis = analyse(ctx.model)
    ctx.analysis.require_activations()          # before any session runs (one would ask for no outputs)
    if ctx.source is not None:
        ctx.analysis = check_shapes(ctx.analysis, first_batch(ctx.source, ctx.model), runtime.session)


def _check_before_calibration(ctx: Context) -> None:
    """The form asked for, and the NIR export, judged on the (frozen) analysis before calibrating."""
    check_form(ctx.analysis, ctx.snn)
    if ctx.request.nir:
        from ..nir.files import verdict
        judged = verdict(ctx.analysis, ctx.snn.keep_analog, ctx.snn.spikes, ctx.snn.signed)
        if not judged["exportable"]:
            raise UserError(f"{param('nir')} {ctx.request.nir}: the SNN cannot be exported to NIR: {judged['reason']}")


# ---- freeze ---------------------------------------------------------------------------------------

def freeze_norms(analysis, source, samples: int, calib: CalibConfig, memory: MemoryBudget) -> tuple:
    """(analysis of the ANN with its blocking normalisation layers frozen, FrozenNorms)."""
    names = fr.candidates(analysis.problems)
    if not names:
        log.warning("--freeze-norm: no normalisation layer between spiking layers; nothing frozen")
        return analysis, fr.FrozenNorms()
    positive(samples, param("freeze_samples"))
    plan = BatchPlan(analysis.model, memory, Bt.NonFinite(calib.skip_nonfinite))
    feeds = plan.feeds(source, plan.calibration(calib.batch_size), samples)
    with runtime.step("--freeze-norm", analysis.model):
        # the ANN as given: a frozen norm is an affine, no longer a spiking site
        model, frozen = fr.freeze(analysis.original or analysis.model, names, feeds)
    first = {k: v for k, v in feeds[0].items() if k in {i.name for i in plan.inputs}}
    return check_shapes(analyse(model), first, runtime.session), frozen


def freeze(ctx: Context) -> None:
    r = ctx.request
    if r.freeze_norm:
        ctx.analysis, ctx.frozen = freeze_norms(ctx.analysis, ctx.source, r.freeze_samples, r.calib, ctx.memory)
    _check_before_calibration(ctx)


# ---- calibrate ------------------------------------------------------------------------------------

def calibrate_source(model, source, config: CalibConfig = CalibConfig(), progress: bool = False,
                     snapshots=(), memory: MemoryBudget | None = None, engine=None) -> Thresholds:
    """Thresholds for `model` (Analysis, ModelProto or path) from a data source (api.calibrate)."""
    analysis = as_analysis(model)
    batch = BatchPlan(analysis.model, memory).calibration(config.batch_size)
    config = replace(config, batch_size=batch)
    n = len(source) if isinstance(source, D.Source) else None
    iters = cal.batches_needed(config, n)
    layout = getattr(source, "layout", "NCHW")
    nonfinite = Bt.NonFinite(config.skip_nonfinite)
    points = snapshots(iters) if callable(snapshots) else snapshots
    if engine is None:
        batches = Bt.prefetch(Bt.calibration_batches(source, batch, iters, config.seed, config.augment, layout,
                                                     nonfinite))
        th = cal.calibrate(analysis, batches, replace(config, iters=iters), progress=progress, snapshots=points)
    else:
        from ..cluster import calibration_shards
        shards = calibration_shards(engine, source, batch, iters, config.seed, config.augment, layout, nonfinite)
        th = cal.calibrate(analysis, None, replace(config, iters=iters), progress=progress, snapshots=points,
                           engine=engine, shards=shards, nonfinite=nonfinite)
    if nonfinite.skipped:
        th.info["skipped_nonfinite_batches"] = nonfinite.skipped
        log.warning("skipped %d calibration batch(es) holding NaN or Inf", nonfinite.skipped)
    return th


def tuned_calibration(analysis, source, calib: CalibConfig, snn: SNNConfig, held: int, progress: bool,
                      memory: MemoryBudget, engine=None):
    """Calibration that keeps threshold snapshots, and the snapshot whose SNN at T is closest to the
    ANN on `held` calibration samples held back from calibration (fit/tuning.py)."""
    rest, held_back = D.split(source, held, calib.seed)
    th = calibrate_source(analysis, rest, calib, progress, snapshots=snapshot_points, memory=memory, engine=engine)
    batches = list(simulation_batches(held_back, analysis.model, snn.timesteps, held, calib.skip_nonfinite, memory))
    choice = choose_snapshot(analysis, th.stats["snapshots"], snn, batches)
    chosen = th.stats["snapshots"][choice.iters]
    info = dict(th.info, iters=choice.iters, tune=choice.to_json(), held_back=held if rest is not source else 0)
    return Thresholds(chosen.values, chosen.method, info, stats=th.stats), choice


def calibrate(ctx: Context) -> None:
    r = ctx.request
    if r.thresholds is not None:
        th = r.thresholds if isinstance(r.thresholds, Thresholds) else Thresholds.load(r.thresholds)
        th.validate(param("thresholds"))
    else:
        if ctx.source is None:
            raise UserError(f"{param('data')}: calibration data is needed (or {param('thresholds')} FILE to reuse "
                            f"thresholds)")
        with runtime.step("calibration", ctx.analysis.model):
            if r.calib.tune == "auto":
                th, ctx.tuned = tuned_calibration(ctx.analysis, ctx.source, r.calib, ctx.snn, r.delay_samples,
                                                  ctx.progress, ctx.memory, ctx.engine)
            else:
                th = calibrate_source(ctx.analysis, ctx.source, r.calib, ctx.progress, memory=ctx.memory,
                                      engine=ctx.engine)
    th.check_against(ctx.analysis.activations, param("thresholds") if r.thresholds is not None else "calibration")
    ctx.thresholds = th


# ---- fit, build, write, nir -----------------------------------------------------------------------

def fit(ctx: Context) -> None:
    r = ctx.request
    ctx.thresholds, ctx.delay_choice, ctx.step_seconds = correct_and_delay(
        ctx.analysis, ctx.thresholds, ctx.snn, ctx.source, r.correct_samples, r.delay_samples, ctx.progress,
        ctx.skip_nonfinite, ctx.memory, ctx.engine)
    if ctx.delay_choice is not None:
        ctx.snn = replace(ctx.snn, delay=ctx.delay_choice.delay)


def build(ctx: Context) -> None:
    r = ctx.request
    used_prep = getattr(ctx.source, "prep", None) or r.prep
    ctx.provenance = Provenance(used_prep.to_json(), Path(r.model_path).name,
                                ctx.delay_choice.to_json() if ctx.delay_choice else None)
    ctx.snn_model, ctx.layers = to_snn(ctx.analysis, ctx.thresholds, ctx.snn, ctx.provenance)
    if ctx.frozen is not None:
        M.set_metadata(ctx.snn_model, {"onnx2snn.frozen_norms": json.dumps(ctx.frozen.to_json(), sort_keys=True)})


def write(ctx: Context) -> None:
    r = ctx.request
    if r.save_thresholds:
        ctx.thresholds.save(r.save_thresholds)
    if r.write:
        write_atomic(ctx.out_path, ctx.snn_model.SerializeToString(), param("output"))


def nir(ctx: Context) -> None:
    if not ctx.request.nir:
        return
    from ..nir.files import export_file
    # the export reads the reference form's IF nodes: other forms are rebuilt for it, same thresholds
    unrolled = ctx.snn_model if ctx.snn.form == "unrolled" and not ctx.snn.portable else \
        to_snn(ctx.analysis, ctx.thresholds, ctx.snn.reference(), ctx.provenance)[0]
    export_file(unrolled, ctx.request.nir, where=param("nir"))


# ---- check ----------------------------------------------------------------------------------------

def check(ctx: Context) -> None:
    r, result = ctx.request, ctx.result
    if not (r.check_samples and ctx.source is not None):
        return
    ts = r.check_timesteps or ev.readout_timesteps(ctx.snn.timesteps)
    task = tasks.for_check(ctx.snn_model, ctx.source)
    plan = BatchPlan(ctx.model, ctx.memory, Bt.NonFinite(ctx.skip_nonfinite))
    check_batch = plan.check(ts[-1])
    result.batches["check"] = check_batch
    batches = plan.batches(ctx.source, check_batch, r.check_samples)
    if task is None and getattr(ctx.source, "task_hint", None) not in (None, "classify"):
        batches = ((feeds, None) for feeds, _ in batches)      # labels it cannot score (boxes without a decode)
    with runtime.step("the check after converting (--check)", ctx.model):
        total = min(r.check_samples, len(ctx.source)) if isinstance(ctx.source, D.Source) else None
        result.check = ev.evaluate(ctx.snn_model, batches, ts, ann=ctx.model, progress=ctx.progress, total=total,
                                   layers=bool(r.report_path or r.plot_dir), memory=ctx.memory, task=task,
                                   engine=ctx.engine, what="the check")
    if r.report_path or r.plot_dir:
        result.report = write_report(result.check, r.report_path, r.plot_dir, model=Path(r.model_path).name,
                                     analog=SNNInfo.from_metadata(ctx.snn_model).analog)


def _result(ctx: Context) -> Conversion:
    """The Conversion of the steps so far (after build): what the caller gets back."""
    r = ctx.request
    result = Conversion(ctx.out_path if r.write else None, ctx.snn_model, ctx.layers, ctx.thresholds,
                        ctx.timings.get("calibrate", 0.0) if r.thresholds is None else 0.0,
                        inputs=D.model_inputs(ctx.model), delay=ctx.delay_choice, tune=ctx.tuned,
                        step_seconds=ctx.step_seconds, memory=ctx.memory, frozen=ctx.frozen, timings=ctx.timings)
    result.batches = batches_used(ctx.analysis.model, r.calib, ctx.snn, r.thresholds is None, ctx.step_seconds,
                                  r.correct_samples, r.delay_samples, ctx.memory, ctx.thresholds.info)
    return result


STEPS = (("load", load), ("freeze", freeze), ("calibrate", calibrate), ("fit", fit), ("build", build),
         ("write", write), ("nir", nir), ("check", check))


def run(ctx: Context) -> Conversion:
    """Every step in order, each timed; the Conversion."""
    for name, step in STEPS:
        with ctx.timed(name):
            step(ctx)
        if name == "build":
            ctx.result = _result(ctx)
    return ctx.result
