"""The Python API; the CLI is a thin layer over these functions.

    from onnx2snn import convert, evaluate_file, run, session
    result = convert("model.onnx", data="calib/")           # writes model.snn.onnx
    sess = session(result.output)                             # onnxruntime session, op registered
"""
from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from .data import batches as Bt
from .calibration import balancing as cal
from . import data as D
from .evaluate import evaluation as ev
from .graph import onnx_io as M
from . import runtime
from .graph.analyse import analyse, as_analysis, check_shapes
from .cluster import check_flags as check_cluster, connect
from .cluster.work import DataSpec
from .config import (AUTO, CORRECT_SAMPLES, DELAY_SAMPLES, E_MAC_PJ, E_SOP_PJ, FREEZE_SAMPLES, RUNTIMES, CalibConfig,
                     SNNConfig, check_energy)
from .fit.steps import choose_delay_on, correct_and_delay, data_defaults, simulation_batches  # noqa: F401 (API)
from .fit.steps import batches_used, calibration_batch_size
from .graph.costs import largest_activation
from .fit.delay import DelayChoice
from .errors import UserError
from .files import Files, write_atomic
from . import freeze
from .data import remote
from . import tasks
from .freeze import FrozenNorms
from .snn import check as check_form
from .snn import to_snn
from .evaluate.plots import plot_report
from .evaluate.report import report_json
from .runtime import memory as mem
from .runtime.backends import RunJob
from .runtime.memory import MemoryBudget
from .snn.info import Provenance, SNNInfo
from .calibration.thresholds import Thresholds
from .fit.tuning import choose_snapshot, snapshot_points

log = logging.getLogger(__name__)


@dataclass
class Conversion:
    output: Path | None
    snn: onnx.ModelProto
    layers: list
    thresholds: Thresholds
    calibration_seconds: float = 0.0
    check: ev.EvalResult | None = None
    inputs: list = field(default_factory=list)
    delay: DelayChoice | None = None     # set when the delay was chosen from data
    report: dict | None = None           # the check's report, with report_path / plot_dir
    tune: object = None                  # tuning.TuneChoice when calib.tune == "auto"
    step_seconds: dict = field(default_factory=dict)   # "correction", "delay": seconds spent on each
    memory: MemoryBudget | None = None   # the budget the batch sizes were chosen in
    batches: dict = field(default_factory=dict)        # step -> samples per batch (those that ran)
    frozen: FrozenNorms | None = None    # --freeze-norm: the layers frozen and the error each adds

    def to_json(self) -> dict:
        """The conversion for machines (`onnx2snn convert --json`): the settings the SNN records,
        its layers with threshold statistics, the corrections, the delay, batch sizes, the check."""
        info = SNNInfo.from_metadata(self.snn)
        layers = []
        for layer in self.layers:
            th = np.asarray(layer.theta, np.float32)
            layers.append({"name": layer.name, "source": layer.source, "role": layer.role,
                           "channels": int(layer.channels or th.size), "theta_mean": float(th.mean()),
                           "theta_min": float(th.min()), "theta_max": float(th.max()),
                           "silent": int(np.sum(th == 0))})
        return {"output": str(self.output) if self.output else None, "form": info.form, "chunk": info.chunk,
                "portable": info.portable, "neuron": info.neuron, "timesteps": info.timesteps,
                "delay": info.delay, "v_init": info.v_init, "maxpool": info.maxpool, "method": self.thresholds.method,
                "calibration": {k: v for k, v in self.thresholds.info.items() if k not in ("correction", "tune")},
                "calibration_seconds": round(self.calibration_seconds, 3),
                "step_seconds": {k: round(v, 3) for k, v in self.step_seconds.items()},
                "correction": self.thresholds.info.get("correction"), "tune": self.thresholds.info.get("tune"),
                "delay_choice": self.delay.to_json() if self.delay else None,
                "memory_bytes": self.memory.bytes if self.memory else None, "batches": dict(self.batches),
                "frozen": self.frozen.to_json() if self.frozen is not None else None,
                "analog": list(info.analog), "layers": layers,
                "check": self.check.to_json() if self.check is not None else None}


def default_output(model_path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name[:-5] + ".snn.onnx" if p.name.endswith(".onnx") else p.name + ".snn.onnx")


def open_source(model: onnx.ModelProto, data=None, data_loader=None, prep: D.Preprocess | None = None,
                files: Files | None = None, annotations=None, split: str | None = None):
    """The data source of --data / --data-loader for `model`'s inputs (paths recorded in `files`):
    also a Pascal VOC root (`split`: one of its ImageSets/Segmentation lists) or, with
    `annotations` (a COCO-format file), the image folder it names (data/datasets.py). `data` may
    be a URL fsspec opens (s3://..., file://...): copied once into a local cache (data/remote.py)."""
    url = str(data) if data and not data_loader and remote.is_url(str(data)) else None
    local = str(remote.localize(url)) if url else data
    if files is not None:
        if data_loader:
            files.input(data_loader.rpartition(":")[0] or data_loader, "--data-loader")
        elif local:
            files.input(local, "--data", folder_ok=True)
        if annotations:
            files.input(annotations, "--annotations")
    inputs, prep = D.model_inputs(model), prep or D.Preprocess()
    source = D.open_data(local, data_loader, inputs, prep, annotations=str(annotations) if annotations else None,
                         split=split)
    if isinstance(source, D.Source) and data:      # how a cluster's workers open the same samples
        source.opened_with = DataSpec(url or str(Path(data).resolve()), tuple(inputs), prep,
                                      str(Path(annotations).resolve()) if annotations else None, split)
    return source


def calibrate(model, source, config: CalibConfig = CalibConfig(), progress: bool = False,
              snapshots=(), memory: MemoryBudget | None = None, engine=None) -> Thresholds:
    """Thresholds for `model` (Analysis, ModelProto or path) from a data source (data.open_data);
    `snapshots`: iteration counts at which the thresholds are also kept (see tuning.py); `engine`:
    a cluster (cluster.connect) whose workers measure the batches of each round."""
    analysis = as_analysis(model)
    batch = calibration_batch_size(analysis.model, config, memory)
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
        from .cluster import calibration_shards
        shards = calibration_shards(engine, source, batch, iters, config.seed, config.augment, layout, nonfinite)
        th = cal.calibrate(analysis, None, replace(config, iters=iters), progress=progress, snapshots=points,
                           engine=engine, shards=shards, nonfinite=nonfinite)
    if nonfinite.skipped:
        th.info["skipped_nonfinite_batches"] = nonfinite.skipped
        log.warning("skipped %d calibration batch(es) holding NaN or Inf", nonfinite.skipped)
    return th


def _first_batch(source, model) -> dict:
    """A first small batch of the data (the model's fixed batch size if it has one)."""
    inputs = D.model_inputs(model)
    if isinstance(source, D.Source):
        n = min(len(source), D.resolve_batch(None, inputs, 2))
        feeds, _ = source.batch(list(range(n)))
    else:
        feeds, _ = next(iter(source.batches()))
    return {k: v for k, v in feeds.items() if k in {i.name for i in inputs}}


def _tuned_calibration(analysis, source, calib: CalibConfig, snn: SNNConfig, held: int, progress: bool,
                       memory: MemoryBudget, engine=None):
    """Calibration that keeps threshold snapshots, and the snapshot whose SNN at T is closest to the
    ANN on `held` calibration samples held back from calibration (tuning.py)."""
    rest, held_back = D.split(source, held, calib.seed)
    th = calibrate(analysis, rest, calib, progress, snapshots=snapshot_points, memory=memory, engine=engine)
    batches = list(simulation_batches(held_back, analysis.model, snn.timesteps, held, calib.skip_nonfinite, memory))
    choice = choose_snapshot(analysis, th.stats["snapshots"], snn, batches)
    chosen = th.stats["snapshots"][choice.iters]
    info = dict(th.info, iters=choice.iters, tune=choice.to_json(), held_back=held if rest is not source else 0)
    return Thresholds(chosen.values, chosen.method, info, stats=th.stats), choice


PLOTS = ("accuracy_vs_T.png", "firing_rates.png", "rate_error.png", "thresholds.png")


def _check_report_outputs(files: Files, report_path, plot_dir) -> None:
    if report_path:
        files.output(report_path, "--report")
    if plot_dir:
        if not Path(plot_dir).is_dir():
            raise UserError(f"--plot {plot_dir}: not a folder")
        for name in PLOTS:
            files.output(Path(plot_dir) / name, "--plot")


def write_report(result: ev.EvalResult, report_path=None, plot_dir=None, e_sop: float = E_SOP_PJ,
                 e_mac: float = E_MAC_PJ, model: str = "", analog=()) -> dict:
    """The report (JSON) and plots of an evaluation with per-layer statistics."""
    report = report_json(result, e_sop, e_mac, model, analog)
    if report_path:
        write_atomic(report_path, json.dumps(report, indent=1, sort_keys=True).encode(), "--report")
    if plot_dir:
        plot_report(report, plot_dir)
    return report


def convert(model_path, data=None, data_loader=None, output=None, *args, workers: int | None = None, cluster=None,
            say=None, **kwargs) -> Conversion:
    """ANN file -> SNN file (see _convert for the other arguments). `workers` (a local Dask cluster
    of that many processes) or `cluster` (an address: tcp://..., ray://..., ray:auto; a
    dask.distributed Client; or a cluster.connect engine): calibration, the corrections, the delay
    choice and the check run their batches there (docs/guide/scaling-out.md), with the same results;
    `say` gets its notes (default: the log)."""
    with connect(workers, cluster, say) as engine:
        return _convert(model_path, data, data_loader, output, *args, engine=engine, **kwargs)


def _convert(model_path, data=None, data_loader=None, output=None,
            calib: CalibConfig = CalibConfig(), snn: SNNConfig | None = None,
            prep: D.Preprocess = D.Preprocess(), thresholds=None, save_thresholds=None,
            check_samples: int = 0, check_timesteps=(), progress: bool = False,
            write: bool = True, delay_samples: int = DELAY_SAMPLES, report_path=None, plot_dir=None,
            correct_samples: int = CORRECT_SAMPLES, max_memory=None, freeze_norm: bool = False,
            freeze_samples: int = FREEZE_SAMPLES, annotations=None, split: str | None = None, nir=None,
            engine=None) -> Conversion:
    """ANN file -> SNN file: load, analyse, calibrate (or reuse thresholds), rewrite, save atomically.

    With `snn.delay == "auto"` the readout delay is chosen on `delay_samples` samples of the data
    (see delay.py). `report_path` / `plot_dir`: the check's report (JSON) and plots, per layer
    included. Every output is checked against every input before any work is done. Without `snn`,
    the SNN has the default T with `data_defaults` (delay and correction from the data).
    `max_memory` (bytes, a size such as "8G", or a MemoryBudget; default half the available memory)
    bounds every batch (see runtime/memory.py); the sizes chosen are in the result's `batches`.
    `freeze_norm`: normalisation layers between spiking layers become fixed affines from the ANN's
    statistics on `freeze_samples` samples of the data (freeze/norms.py; result's `frozen`).
    `annotations`, `split`: see open_source; the check scores the task the data holds (tasks/).
    `nir`: also write the SNN as a NIR graph there (nir/files.py; checked exportable before
    calibration). `engine`: a cluster (cluster.connect) or None."""
    if snn is None:
        snn = SNNConfig(**data_defaults(bool(data or data_loader), thresholds))
    if snn.delay == AUTO and not (data or data_loader):
        raise UserError("--delay auto: needs --data (or --data-loader) to choose the delay from")
    if freeze_norm and not (data or data_loader):
        raise UserError("--freeze-norm: needs --data (or --data-loader) to measure the statistics on")
    _positive(correct_samples, "--correct-samples")
    if isinstance(delay_samples, bool) or not isinstance(delay_samples, int) or delay_samples < 1:
        raise UserError(f"--delay-samples {delay_samples}: must be an integer >= 1")
    if isinstance(check_samples, bool) or not isinstance(check_samples, int) or check_samples < 0:
        raise UserError(f"--check {check_samples}: must be an integer >= 0")
    memory = mem.budget(max_memory)
    files = Files()
    files.input(model_path, "the model")
    if thresholds is not None and not isinstance(thresholds, Thresholds):
        files.input(thresholds, "--thresholds")
    model = M.load(model_path)
    source = open_source(model, data, data_loader, prep, files, annotations, split) if (data or data_loader) else None
    out_path = Path(output) if output else default_output(model_path)
    if write:
        files.output(out_path, "-o")
    if save_thresholds:
        files.output(save_thresholds, "--save-thresholds")
        if write and Path(save_thresholds).resolve() == out_path.resolve():
            raise UserError(f"--save-thresholds {save_thresholds}: is also the -o output")
    if (report_path or plot_dir) and not (check_samples and source is not None):
        raise UserError("--report/--plot describe the check after converting: they need --data and --check N > 0")
    _check_report_outputs(files, report_path, plot_dir)
    if nir:
        from .nir.files import check_outputs
        check_outputs(files, nir, "--nir",
                      [p for p in (out_path if write else None, save_thresholds, report_path) if p])
    analysis = analyse(model)
    analysis.require_activations()             # before any session runs (one would ask for no outputs)
    if source is not None:
        analysis = check_shapes(analysis, _first_batch(source, model), runtime.session)
    frozen = None
    if freeze_norm:
        analysis, frozen = _freeze_norms(analysis, source, freeze_samples, calib, memory)
    check_form(analysis, snn)
    if nir:
        from .nir.files import verdict
        judged = verdict(analysis, snn.keep_analog, snn.spikes, snn.signed)
        if not judged["exportable"]:
            raise UserError(f"--nir {nir}: the SNN cannot be exported to NIR: {judged['reason']}")
    seconds, tuned = 0.0, None
    if thresholds is not None:
        th = thresholds if isinstance(thresholds, Thresholds) else Thresholds.load(thresholds)
        th.validate("--thresholds")
    else:
        if source is None:
            raise UserError("--data: calibration data is needed (or --thresholds FILE to reuse thresholds)")
        start = time.perf_counter()
        with runtime.step("calibration", analysis.model):
            if calib.tune == "auto":
                th, tuned = _tuned_calibration(analysis, source, calib, snn, delay_samples, progress, memory, engine)
            else:
                th = calibrate(analysis, source, calib, progress, memory=memory, engine=engine)
        seconds = time.perf_counter() - start
    th.check_against(analysis.activations, "--thresholds" if thresholds is not None else "calibration")
    th, delay_choice, step_seconds = correct_and_delay(analysis, th, snn, source, correct_samples, delay_samples,
                                                        progress, calib.skip_nonfinite, memory, engine)
    if delay_choice is not None:
        snn = replace(snn, delay=delay_choice.delay)
    used_prep = getattr(source, "prep", None) or prep
    provenance = Provenance(used_prep.to_json(), Path(model_path).name,
                            delay_choice.to_json() if delay_choice else None)
    snn_model, layers = to_snn(analysis, th, snn, provenance)
    if frozen is not None:
        M.set_metadata(snn_model, {"onnx2snn.frozen_norms": json.dumps(frozen.to_json(), sort_keys=True)})
    if save_thresholds:
        th.save(save_thresholds)
    if write:
        write_atomic(out_path, snn_model.SerializeToString(), "-o")
    if nir:
        from .nir.files import export_file
        # the export reads the unrolled form's IF nodes: other forms are rebuilt for it, same thresholds
        unrolled = snn_model if snn.form == "unrolled" and not snn.portable else \
            to_snn(analysis, th, replace(snn, form="unrolled", portable=False, chunk=1, early_exit=False,
                                         loop_op="loop"), provenance)[0]
        export_file(unrolled, nir, where="--nir")
    result = Conversion(out_path if write else None, snn_model, layers, th, seconds,
                        inputs=D.model_inputs(model), delay=delay_choice, tune=tuned, step_seconds=step_seconds,
                        memory=memory, frozen=frozen)
    result.batches = batches_used(analysis.model, calib, snn, thresholds is None, step_seconds, correct_samples,
                                   delay_samples, memory, th.info)
    if check_samples and source is not None:
        ts = check_timesteps or sorted({max(1, snn.timesteps // 4), max(1, snn.timesteps // 2), snn.timesteps})
        inputs = D.model_inputs(model)
        task = tasks.for_check(snn_model, source)
        fit = ev.simulation_batch(largest_activation(model), ts[-1], memory)
        check_batch = D.resolve_batch(None, inputs, min(32, fit))
        result.batches["check"] = check_batch
        batches = Bt.eval_batches(source, check_batch, check_samples,
                                 exact=D.static_batch(inputs) is not None, nonfinite=Bt.NonFinite(calib.skip_nonfinite))
        if task is None and getattr(source, "task_hint", None) not in (None, "classify"):
            batches = ((feeds, None) for feeds, _ in batches)      # labels it cannot score (boxes without a decode)
        with runtime.step("the check after converting (--check)", model):
            result.check = ev.evaluate(snn_model, batches, ts, ann=model, progress=progress,
                                       total=min(check_samples, len(source)) if isinstance(source, D.Source) else None,
                                       layers=bool(report_path or plot_dir), memory=memory, task=task,
                                       engine=engine, what="the check")
        if report_path or plot_dir:
            result.report = write_report(result.check, report_path, plot_dir, model=Path(model_path).name,
                                         analog=SNNInfo.from_metadata(snn_model).analog)
    return result


def _freeze_norms(analysis, source, samples: int, calib: CalibConfig, memory: MemoryBudget) -> tuple:
    """(analysis of the ANN with its blocking normalisation layers frozen, FrozenNorms)."""
    names = freeze.candidates(analysis.problems)
    if not names:
        log.warning("--freeze-norm: no normalisation layer between spiking layers; nothing frozen")
        return analysis, freeze.FrozenNorms()
    _positive(samples, "--freeze-samples")
    inputs = D.model_inputs(analysis.model)
    batch = D.resolve_batch(None, inputs, calibration_batch_size(analysis.model, calib, memory))
    feeds = [f for f, _ in Bt.eval_batches(source, batch, samples, exact=D.static_batch(inputs) is not None,
                                           nonfinite=Bt.NonFinite(calib.skip_nonfinite))]
    with runtime.step("--freeze-norm", analysis.model):
        model, frozen = freeze.freeze(analysis.model, names, feeds)
    first = {k: v for k, v in feeds[0].items() if k in {i.name for i in inputs}}
    return check_shapes(analyse(model), first, runtime.session), frozen


def load_snn(path) -> onnx.ModelProto:
    """A model written by onnx2snn (its metadata is checked)."""
    model = M.read(path, "SNN")
    SNNInfo.from_metadata(model, str(path))
    return model


def recorded_preprocess(model: onnx.ModelProto, mean=None, std=None, size=None, layout=None) -> D.Preprocess:
    """The conversion's preprocessing, overridden by any flag given."""
    info = SNNInfo.from_metadata(model)
    base = D.Preprocess.from_json(info.provenance.preprocessing) if info.provenance.preprocessing \
        else D.Preprocess()
    return D.Preprocess(mean if mean is not None else base.mean, std if std is not None else base.std,
                        size if size is not None else base.size, layout or base.layout, base.resize, base.crop)


def _positive(value, flag: str):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"{flag} {value}: must be an integer >= 1")


def _open_snn(snn_path, batch_size, limit):
    """(files, SNN model, its info): the flags checked, the SNN read and remembered as an input."""
    _positive(batch_size, "--batch-size")
    _positive(limit, "--limit")
    files = Files()
    files.input(snn_path, "the SNN")
    snn_model = load_snn(snn_path)
    return files, snn_model, SNNInfo.from_metadata(snn_model, str(snn_path))


def evaluate_file(snn_path, data=None, data_loader=None, ann_path=None, timesteps=None,
                  batch_size: int | None = None, limit: int | None = None, prep: D.Preprocess | None = None,
                  progress: bool = False, json_path=None, report_path=None, plot_dir=None,
                  e_sop: float = E_SOP_PJ, e_mac: float = E_MAC_PJ, max_memory=None, task: str | None = None,
                  annotations=None, decode: str | None = None, split: str | None = None,
                  delay=None, workers: int | None = None, cluster=None, say=None) -> ev.EvalResult:
    """Evaluate a converted model at each T of `timesteps` (default: the model's T/4, T/2, T).
    `json_path`: the short results as JSON; `report_path` / `plot_dir`: the full report (per layer,
    SOP90/95, frames per joule) and its plots. Files are written atomically. The batch (unless
    `batch_size`) is the largest within `max_memory` (see convert), in the result's `batch_size`.
    `task` (classify, segment, detect, regress; default inferred, tasks.infer), `annotations`
    (COCO file), `decode` (FILE.py:FN turning outputs into boxes), `split` (VOC list): what is scored.
    `delay`: None (the model's D scaled to each T), an int, or "auto" (evaluate.evaluate).
    `workers`, `cluster`, `say`: the batches run on a cluster (see convert), with the same results."""
    check_energy(e_sop, e_mac)
    with connect(workers, cluster, say) as engine:     # a local cluster starts while the files are read
        return _evaluate_file(snn_path, data, data_loader, ann_path, timesteps, batch_size, limit, prep, progress,
                              json_path, report_path, plot_dir, e_sop, e_mac, max_memory, task, annotations,
                              decode, split, delay, engine)


def _evaluate_file(snn_path, data, data_loader, ann_path, timesteps, batch_size, limit, prep, progress, json_path,
                   report_path, plot_dir, e_sop, e_mac, max_memory, task, annotations, decode, split, delay,
                   engine) -> ev.EvalResult:
    files, snn_model, info = _open_snn(snn_path, batch_size, limit)
    timesteps = list(timesteps) if timesteps else ev.default_timesteps(info)
    inputs = D.model_inputs(snn_model)
    memory = mem.budget(max_memory)
    batch_size = D.resolve_batch(batch_size, inputs, ev.auto_batch_size(info, max(timesteps), memory))
    prep = prep or recorded_preprocess(snn_model)
    ann = None
    if ann_path:
        files.input(ann_path, "--ann")
        ann = M.load(ann_path)
    source = open_source(snn_model, data, data_loader, prep, files, annotations, split)
    if decode:
        files.input(decode.rpartition(":")[0] or decode, "--decode")
    spec = tasks.infer(snn_model, ev.score_output(snn_model), source, task, annotations, decode,
                       getattr(source, "size", None))
    if json_path:
        files.output(json_path, "--json")
    _check_report_outputs(files, report_path, plot_dir)
    total = min(limit or len(source), len(source)) if isinstance(source, D.Source) else None
    batches = Bt.eval_batches(source, batch_size, limit, exact=D.static_batch(inputs) is not None)
    result = ev.evaluate(snn_model, batches, timesteps, ann, progress=progress, total=total,
                         layers=bool(report_path or plot_dir), memory=memory, task=spec, delay=delay, engine=engine)
    result.task_reason = spec.reason if spec is not None else None
    result.batch_size, result.memory = batch_size, memory
    result.slice_steps = ev.slice_steps(info, max(timesteps), memory, snn_model.ByteSize())
    largest = info.costs.get("largest_activation", 0)
    if largest:
        steps = info.chunk if info.looped else result.slice_steps or max(timesteps)
        result.sample_bytes = mem.simulation_sample_bytes(largest, steps)
    if json_path:
        write_atomic(json_path, json.dumps(result.to_json(), indent=1, sort_keys=True).encode(), "--json")
    if report_path or plot_dir:
        result.report = write_report(result, report_path, plot_dir, e_sop, e_mac, Path(snn_path).name, info.analog)
    return result


def run_file(snn_path, output, data=None, data_loader=None, batch_size: int | None = None,
             limit: int | None = None, prep: D.Preprocess | None = None, runtime_name: str = RUNTIMES[0],
             max_memory=None, annotations=None, split: str | None = None, workers: int | None = None,
             cluster=None, say=None) -> dict:
    """Run a converted model over a data set on `runtime_name` (onnxruntime, openvino, tract) and
    write its tensor outputs (.npy: one output; .npz keyed by output name) atomically; returns them.
    `workers`, `cluster`, `say`: the batches run on a cluster (see convert), the outputs gathered
    here in order."""
    check_cluster(workers, cluster)
    files, snn, info = _open_snn(snn_path, batch_size, limit)
    source = open_source(snn, data, data_loader, prep or recorded_preprocess(snn), files, annotations, split)
    names = [o.name for o in snn.graph.output if o.type.HasField("tensor_type")]
    skipped = [o.name for o in snn.graph.output if not o.type.HasField("tensor_type")]
    if skipped:
        log.warning("run: output(s) %s are not tensors (e.g. a ZipMap) and are not saved", ", ".join(skipped))
    if not names:
        raise UserError(f"-o {output}: the model has no tensor output to save")
    out = _output_file(files, output, names)
    inputs = D.model_inputs(snn)
    batch = D.resolve_batch(batch_size, inputs, ev.auto_batch_size(info, info.timesteps, mem.budget(max_memory)))
    chunks = {n: [] for n in names}
    batches = Bt.eval_batches(source, batch, limit, exact=D.static_batch(inputs) is not None)
    with connect(workers, cluster, say) as engine:
        if engine is None:
            run_batch = runtime.backend(runtime_name, snn_path)
            results = (run_batch(feeds) for feeds, _ in batches)
        else:
            from .cluster import batch_shards
            shards, reading = batch_shards(engine, batches, "run")
            results = (values for _, values, _ in engine.map("run", RunJob(runtime_name, snn_path, names), shards,
                                                             reading) if values is not None)
        for values in results:
            for n in names:
                chunks[n].append(np.asarray(values[n]))
    if not chunks[names[0]]:
        raise UserError("run: received no data")
    # per-sample outputs are concatenated; per-batch scalars (onnx2snn_steps) are stacked
    arrays = {n: np.concatenate(v) if v[0].ndim else np.stack(v) for n, v in chunks.items()}
    _save_outputs(out, arrays)
    return arrays


def _output_file(files: Files, output, names: list) -> Path:
    """-o of run and run-nir, checked: .npy for one output, .npz for any."""
    out = Path(output)
    if out.suffix not in (".npy", ".npz"):
        raise UserError(f"-o {out}: expected a .npy or .npz file name")
    files.output(out, "-o")
    if out.suffix == ".npy" and len(names) != 1:
        raise UserError(f"-o {out}: the model has {len(names)} outputs; use .npz")
    return out


def _save_outputs(out: Path, arrays: dict) -> None:
    buf = io.BytesIO()
    if out.suffix == ".npy":
        np.save(buf, next(iter(arrays.values())))
    else:
        np.savez(buf, **arrays)
    write_atomic(out, buf.getvalue())


def run_nir_file(nir_path, output, data=None, data_loader=None, batch_size: int | None = None,
                 limit: int | None = None, prep=None, timesteps: int | None = None,
                 delay: int | None = None, annotations=None, split: str | None = None) -> dict:
    """`onnx2snn run-nir`: a NIR graph written by export-nir (host parts included, nir/files.py)
    run over a data set by the NumPy reference simulation (nir/simulate.py); T and D from the
    graph's metadata unless given; outputs written as run_file writes them; returns them. `prep`:
    a data.Preprocess, or a function of the one recorded in the graph (the flags applied to it)."""
    from .nir.files import NirFile
    _positive(batch_size, "--batch-size")
    _positive(limit, "--limit")
    _positive(timesteps, "-T")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int) or delay < 0):
        raise UserError(f"-D {delay}: must be an integer >= 0")
    files = Files()
    model = NirFile(nir_path, files)
    out = _output_file(files, output, model.outputs)
    interface = model.interface()
    recorded = model.preprocess()
    prep = prep(recorded) if callable(prep) else (prep or recorded)
    source = open_source(interface, data, data_loader, prep, files, annotations, split)
    inputs = D.model_inputs(interface)
    batch = D.resolve_batch(batch_size, inputs, 32)
    chunks = {n: [] for n in model.outputs}
    for feeds, _ in Bt.eval_batches(source, batch, limit, exact=D.static_batch(inputs) is not None):
        for name, value in model(feeds, timesteps, delay).items():
            chunks[name].append(np.asarray(value))
    if not chunks[model.outputs[0]]:
        raise UserError("run-nir: received no data")
    arrays = {n: np.concatenate(v) for n, v in chunks.items()}
    _save_outputs(out, arrays)
    return arrays


def session(model, threads: int = 0):
    """onnxruntime session for a converted model (path or ModelProto); the IF op library is
    registered when the model uses it."""
    return runtime.session(model, threads)


def run(snn_path, feeds: dict, threads: int = 0) -> dict:
    """Run a converted model on one feed dict; returns {output name: array}."""
    sess = runtime.session(str(snn_path), threads)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))
