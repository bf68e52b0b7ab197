"""The Python API; the CLI is a thin layer over these functions.

    from onnx2snn import convert, evaluate_file, run, session
    result = convert("model.onnx", data="calib/")           # writes model.snn.onnx
    sess = session(result.output)                             # onnxruntime session, op registered
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import onnx

from . import data as D
from . import runtime, tasks
from .calibration.thresholds import Thresholds
from .cluster import check_flags as check_cluster, connect
from .config import (CORRECT_SAMPLES, DELAY_SAMPLES, E_MAC_PJ, E_SOP_PJ, FREEZE_SAMPLES, RUNTIMES, CalibConfig,
                     SNNConfig, check_energy)
from .conversion import steps as pipeline
from .conversion.context import Context, Request, default_output, open_source  # noqa: F401 (API)
from .conversion.result import Conversion
from .conversion.steps import positive
from .data.plan import BatchPlan
from .errors import UserError, param
from .evaluate import evaluation as ev
from .evaluate.report import PLOTS, check_report_outputs, write_report  # noqa: F401 (API)
from .files import Files, write_atomic
from .fit.steps import choose_delay_on, data_defaults, simulation_batches  # noqa: F401 (API)
from .graph import onnx_io as M
from .runtime import memory as mem
from .runtime.backends import RunJob
from .runtime.memory import MemoryBudget
from .runtime.optimized import optimized_for
from .snn.info import SNNInfo

log = logging.getLogger(__name__)


def convert(model_path, data=None, data_loader=None, output=None, calib: CalibConfig = CalibConfig(),
            snn: SNNConfig | None = None, prep: D.Preprocess = D.Preprocess(), thresholds=None,
            save_thresholds=None, check_samples: int = 0, check_timesteps=(), progress: bool = False,
            write: bool = True, delay_samples: int = DELAY_SAMPLES, report_path=None, plot_dir=None,
            correct_samples: int = CORRECT_SAMPLES, max_memory=None, freeze_norm: bool = False,
            freeze_samples: int = FREEZE_SAMPLES, annotations=None, split: str | None = None, nir=None,
            workers: int | None = None, cluster=None, say=None) -> Conversion:
    """ANN file -> SNN file, in named steps (conversion/steps.py: load, freeze, calibrate, fit, build,
    write, nir, check), each timed (the result's `timings`). Every output is checked against every
    input before any work is done; files are written atomically.

    `data` / `data_loader`: calibration data (a folder of images, .npy/.npz files, a URL; or a
    FILE.py:FN loader), preprocessed by `prep`; `annotations`, `split`: a COCO file or a VOC list
    (the check scores the task the data holds). `calib`: how thresholds are calibrated, or
    `thresholds` (a Thresholds or a file) to reuse; `save_thresholds`: where to save them.
    `snn`: the network to build; without it, the default T with `data_defaults` (the delay chosen
    and both corrections with data). `delay_samples`, `correct_samples`: calibration samples for
    the delay choice and the corrections (docs/method/defaults.md). `freeze_norm`: normalisation
    layers between spiking layers become fixed affines from the ANN's statistics on
    `freeze_samples` samples. `check_samples` (0: none) at `check_timesteps` (default T/4, T/2, T):
    the SNN against the ANN after converting, with its report (JSON) and plots in `report_path` /
    `plot_dir`. `output` (default MODEL.snn.onnx; `write=False`: nothing written). `max_memory`
    (bytes, a size such as "8G", or a MemoryBudget; default half the available memory) bounds every
    batch (runtime/memory.py); the sizes chosen are in the result's `batches`. `nir`: also write the
    SNN as a NIR graph there (checked exportable before calibration). `workers` (a local Dask
    cluster of that many processes) or `cluster` (tcp://..., ray://..., ray:auto; a Client; or a
    cluster.connect engine): the batches run there (docs/guide/scaling-out.md), with the same
    results; `say` gets its notes (default: the log). `progress`: progress bars."""
    request = Request(model_path, data, data_loader, output, calib, snn, prep, thresholds, save_thresholds,
                      check_samples, tuple(check_timesteps), progress, write, delay_samples, report_path, plot_dir,
                      correct_samples, max_memory, freeze_norm, freeze_samples, annotations, split, nir)
    memory = mem.budget(max_memory)
    with connect(workers, cluster, say) as engine:
        return pipeline.run(Context(request, Files(), memory, engine, snn=snn))


def calibrate(model, source, config: CalibConfig = CalibConfig(), progress: bool = False,
              snapshots=(), memory: MemoryBudget | None = None, engine=None) -> Thresholds:
    """Thresholds for `model` (Analysis, ModelProto or path) from a data source (data.open_data);
    `snapshots`: iteration counts at which the thresholds are also kept (see fit/tuning.py); `engine`:
    a cluster (cluster.connect) whose workers measure the batches of each round."""
    return pipeline.calibrate_source(model, source, config, progress, snapshots, memory, engine)


def load_snn(path, optimized: bool = False) -> onnx.ModelProto:
    """A model written by onnx2snn (its metadata is checked). An optimized file (`optimize_file`) is
    refused unless `optimized`: it is for running, not for evaluation or export."""
    model = M.read(path, "SNN")
    SNNInfo.from_metadata(model, str(path))
    if not optimized and optimized_for(model) is not None:
        raise UserError(f"{path}: an optimized file (onnx2snn optimize) is for running; use the converted file "
                        "it was made from")
    return model


def optimize_file(snn_path, output=None, portable_only: bool = False) -> dict:
    """Write `snn_path` as onnx2snn's sessions run it on this machine (runtime.optimize): the fused
    neuron inputs (any CPU and onnxruntime), and, unless `portable_only`, onnxruntime's blocked layout
    for this CPU and onnxruntime version. `output`: default MODEL.opt.onnx beside it; written
    atomically, never over the input. Returns what was written: {"path", "rewrites", ...}."""
    files = Files()
    files.input(snn_path, "the SNN")
    model = load_snn(snn_path)
    out = Path(output) if output else Path(snn_path).with_suffix(".opt.onnx")
    files.output(out, param("output"))
    graph = runtime.optimize(model, str(snn_path), portable_only)
    write_atomic(out, graph.SerializeToString(), param("output"))
    return {"path": str(out), **optimized_for(graph)}


def recorded_preprocess(model: onnx.ModelProto, mean=None, std=None, size=None, layout=None) -> D.Preprocess:
    """The conversion's preprocessing, overridden by any flag given."""
    info = SNNInfo.from_metadata(model)
    base = D.Preprocess.from_json(info.provenance.preprocessing) if info.provenance.preprocessing \
        else D.Preprocess()
    return D.Preprocess(mean if mean is not None else base.mean, std if std is not None else base.std,
                        size if size is not None else base.size, layout or base.layout, base.resize, base.crop)


def _open_snn(snn_path, batch_size, limit, optimized: bool = False):
    """(files, SNN model, its info): the flags checked, the SNN read and remembered as an input
    (`optimized`: an optimized file is accepted)."""
    positive(batch_size, param("batch_size"))
    positive(limit, param("limit"))
    files = Files()
    files.input(snn_path, "the SNN")
    snn_model = load_snn(snn_path, optimized)
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
    memory = mem.budget(max_memory)
    plan = BatchPlan(snn_model, memory)
    batch_size = plan.converted(info, max(timesteps), batch_size)
    prep = prep or recorded_preprocess(snn_model)
    ann = None
    if ann_path:
        files.input(ann_path, param("ann"))
        ann = M.load(ann_path)
    source = open_source(snn_model, data, data_loader, prep, files, annotations, split)
    if decode:
        files.input(decode.rpartition(":")[0] or decode, param("decode"))
    spec = tasks.infer(snn_model, ev.score_output(snn_model), source, task, annotations, decode,
                       getattr(source, "size", None))
    if json_path:
        files.output(json_path, param("json_path"))
    check_report_outputs(files, report_path, plot_dir)
    total = min(limit or len(source), len(source)) if isinstance(source, D.Source) else None
    batches = plan.batches(source, batch_size, limit)
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
        write_atomic(json_path, json.dumps(result.to_json(), indent=1, sort_keys=True).encode(), param("json_path"))
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
    files, snn, info = _open_snn(snn_path, batch_size, limit, optimized=True)
    source = open_source(snn, data, data_loader, prep or recorded_preprocess(snn), files, annotations, split)
    names = [o.name for o in snn.graph.output if o.type.HasField("tensor_type")]
    skipped = [o.name for o in snn.graph.output if not o.type.HasField("tensor_type")]
    if skipped:
        log.warning("run: output(s) %s are not tensors (e.g. a ZipMap) and are not saved", ", ".join(skipped))
    if not names:
        raise UserError(f"{param('output')} {output}: the model has no tensor output to save")
    out = _output_file(files, output, names)
    plan = BatchPlan(snn, mem.budget(max_memory))
    chunks = {n: [] for n in names}
    batches = plan.batches(source, plan.converted(info, info.timesteps, batch_size), limit)
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
        raise UserError(f"{param('output')} {out}: expected a .npy or .npz file name")
    files.output(out, param("output"))
    if out.suffix == ".npy" and len(names) != 1:
        raise UserError(f"{param('output')} {out}: the model has {len(names)} outputs; use .npz")
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
    positive(batch_size, param("batch_size"))
    positive(limit, param("limit"))
    positive(timesteps, param("timesteps"))
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int) or delay < 0):
        raise UserError(f"{param('delay')} {delay}: must be an integer >= 0")
    files = Files()
    model = NirFile(nir_path, files)
    out = _output_file(files, output, model.outputs)
    interface = model.interface()
    recorded = model.preprocess()
    prep = prep(recorded) if callable(prep) else (prep or recorded)
    source = open_source(interface, data, data_loader, prep, files, annotations, split)
    plan = BatchPlan(interface)
    chunks = {n: [] for n in model.outputs}
    for feeds, _ in plan.batches(source, plan.nir(batch_size), limit):
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
