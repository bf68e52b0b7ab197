"""The Python API; the CLI is a thin layer over these functions.

    from onnx2snn import convert, evaluate_file, run, session
    result = convert("model.onnx", data="calib/")           # writes model.snn.onnx
    sess = session(result.output)                             # onnxruntime session, op registered
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from . import calibration as cal
from . import data as D
from . import evaluate as ev
from . import model as M
from . import ops
from .delay import AUTO, DelayChoice, choose_delay
from .energy import largest_activation
from .errors import UserError
from .rewrite import SNNConfig, check_convertible, to_snn

log = logging.getLogger(__name__)


@dataclass
class Conversion:
    output: Path | None
    snn: onnx.ModelProto
    layers: list
    thresholds: cal.Thresholds
    calibration_seconds: float = 0.0
    check: ev.EvalResult | None = None
    inputs: list = field(default_factory=list)
    delay: DelayChoice | None = None     # set when the delay was chosen from data


def choose_delay_on(model: onnx.ModelProto, thresholds, snn: SNNConfig, source, samples: int = 200,
                    threads: int = 0, progress: bool = False) -> DelayChoice:
    """The readout delay for `snn.timesteps`, chosen on `samples` samples of `source` (a fixed random
    subset when it holds more; the first batches of a loader script)."""
    inputs = D.model_inputs(model)
    batch = D.resolve_batch(None, inputs, min(samples, simulation_batch(largest_activation(model), snn.timesteps)))
    batches = D.eval_batches(source, batch, samples, exact=D.static_batch(inputs) is not None)
    total = min(samples, len(source)) if isinstance(source, D.Source) else None
    return choose_delay(model, thresholds, snn, batches, threads, progress, total)


def default_output(model_path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name[:-5] + ".snn.onnx" if p.name.endswith(".onnx") else p.name + ".snn.onnx")


def open_source(model: onnx.ModelProto, data=None, data_loader=None, prep: D.Preprocess | None = None):
    return D.open_data(data, data_loader, D.model_inputs(model), prep or D.Preprocess())


def calibrate(model: onnx.ModelProto, source, config: cal.CalibConfig = cal.CalibConfig(),
              progress: bool = False) -> cal.Thresholds:
    """Thresholds for `model` from a data source (see data.open_data)."""
    config.validate()
    batch = D.resolve_batch(config.batch_size, D.model_inputs(model), 100)
    config = cal.CalibConfig(**{**config.__dict__, "batch_size": batch})
    n = len(source) if isinstance(source, D.Source) else None
    iters = cal.batches_needed(config, n)
    layout = getattr(source, "layout", "NCHW")
    batches = D.calibration_batches(source, batch, iters, config.seed, config.augment, layout)
    cfg = cal.CalibConfig(**{**config.__dict__, "iters": iters})
    return cal.calibrate(model, batches, cfg, progress=progress)


def convert(model_path, data=None, data_loader=None, output=None,
            calib: cal.CalibConfig = cal.CalibConfig(), snn: SNNConfig = SNNConfig(),
            prep: D.Preprocess = D.Preprocess(), thresholds=None, save_thresholds=None,
            check_samples: int = 0, check_timesteps=(), progress: bool = False,
            write: bool = True, delay_samples: int = 200) -> Conversion:
    """ANN file -> SNN file: load, calibrate (or reuse thresholds), rewrite, save atomically.

    With `snn.delay == "auto"` the readout delay is chosen on `delay_samples` samples of the data
    (see delay.py)."""
    calib.validate()
    snn.validate()
    if snn.delay == AUTO and not (data or data_loader):
        raise UserError("--delay auto: needs --data (or --data-loader) to choose the delay from")
    if delay_samples < 1:
        raise UserError(f"--delay-samples {delay_samples}: must be >= 1")
    model = M.load(model_path)
    out_path = Path(output) if output else default_output(model_path)
    if write and out_path.resolve() == Path(model_path).resolve():
        raise UserError(f"-o {out_path}: refusing to overwrite the input model")
    check_convertible(model, snn)
    source = None
    if data or data_loader:
        source = open_source(model, data, data_loader, prep)
    seconds = 0.0
    if thresholds is not None:
        th = thresholds if isinstance(thresholds, cal.Thresholds) else cal.Thresholds.load(thresholds)
    else:
        if source is None:
            raise UserError("--data: calibration data is needed (or --thresholds FILE to reuse thresholds)")
        start = time.perf_counter()
        th = calibrate(model, source, calib, progress)
        seconds = time.perf_counter() - start
        if save_thresholds:
            th.save(save_thresholds)
    used_prep = getattr(source, "prep", None) or prep
    metadata = {"onnx2snn.preprocessing": used_prep.to_json(),
                "onnx2snn.source_model": Path(model_path).name}
    delay_choice = None
    if snn.delay == AUTO:
        delay_choice = choose_delay_on(model, th, snn, source, delay_samples, progress=progress)
        snn = replace(snn, delay=delay_choice.delay)
        metadata["onnx2snn.delay_choice"] = json.dumps(delay_choice.to_json())
    snn_model, layers = to_snn(model, th, snn, metadata)
    if write:
        M.save_atomic(snn_model, out_path, refuse=[model_path])
    result = Conversion(out_path if write else None, snn_model, layers, th, seconds,
                        inputs=D.model_inputs(model), delay=delay_choice)
    if check_samples and source is not None:
        ts = check_timesteps or sorted({max(1, snn.timesteps // 4), max(1, snn.timesteps // 2), snn.timesteps})
        ts = [t for t in ts if t > snn.delay]
        inputs = D.model_inputs(model)
        batches = D.eval_batches(source, D.resolve_batch(None, inputs, 32), check_samples,
                                 exact=D.static_batch(inputs) is not None)
        result.check = ev.evaluate(snn_model, batches, ts, ann=model, progress=progress,
                                   total=min(check_samples, len(source)) if isinstance(source, D.Source) else None)
    return result


def load_snn(path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise UserError(f"{path}: not an ONNX model ({type(err).__name__})") from None
    if not model.graph.node:
        raise UserError(f"{path}: not an ONNX model (no graph nodes)")
    return model


def recorded_preprocess(model: onnx.ModelProto, mean=None, std=None, size=None, layout=None) -> D.Preprocess:
    """The conversion's preprocessing, overridden by any flag given."""
    meta = M.get_metadata(model)
    base = D.Preprocess.from_json(meta["onnx2snn.preprocessing"]) if "onnx2snn.preprocessing" in meta \
        else D.Preprocess()
    return D.Preprocess(mean if mean is not None else base.mean, std if std is not None else base.std,
                        size if size is not None else base.size, layout or base.layout)


def simulation_batch(largest_activation: int, t_max: int, budget_mb: float = 2048) -> int:
    """Samples per unrolled simulation batch so that T_max x batch x the largest activation stays
    within `budget_mb`, counting eight float32 copies alive at once (ResNet-32 at T=128: 32 samples,
    2.6 GB peak RSS for the whole eval); at most 64."""
    if not largest_activation:
        return 16
    per_sample_mb = 8 * t_max * largest_activation * 4 / 2 ** 20
    return int(max(1, min(64, budget_mb // max(per_sample_mb, 1e-9))))


def auto_batch_size(snn_model: onnx.ModelProto, t_max: int, budget_mb: float = 2048) -> int:
    """Simulation batch for a converted model (see simulation_batch); looped models use 16."""
    meta = M.get_metadata(snn_model)
    if meta.get("onnx2snn.form") == "loop":
        return 16
    largest = json.loads(meta.get("onnx2snn.costs", "{}")).get("largest_activation", 0)
    return simulation_batch(largest, t_max, budget_mb)


def default_timesteps(snn_model: onnx.ModelProto) -> list:
    """T/4, T/2 and T of a converted model, those above its readout delay."""
    meta = ev.snn_metadata(snn_model)
    t, delay = int(meta.get("onnx2snn.timesteps", 64)), int(meta.get("onnx2snn.delay", 0))
    return sorted({x for x in (t // 4, t // 2, t) if x > delay})


def evaluate_file(snn_path, data=None, data_loader=None, ann_path=None, timesteps=None,
                  batch_size: int | None = None, limit: int | None = None, prep: D.Preprocess | None = None,
                  progress: bool = False) -> ev.EvalResult:
    """Evaluate a converted model at each T of `timesteps` (default: default_timesteps)."""
    snn_model = load_snn(snn_path)
    timesteps = list(timesteps) if timesteps else default_timesteps(snn_model)
    inputs = D.model_inputs(snn_model)
    batch_size = D.resolve_batch(batch_size, inputs, auto_batch_size(snn_model, max(timesteps)))
    prep = prep or recorded_preprocess(snn_model)
    ann = M.load(ann_path) if ann_path else None
    source = D.open_data(data, data_loader, D.model_inputs(snn_model), prep)
    total = min(limit or len(source), len(source)) if isinstance(source, D.Source) else None
    return ev.evaluate(snn_model, D.eval_batches(source, batch_size, limit, exact=D.static_batch(inputs) is not None),
                       timesteps, ann,
                       progress=progress, total=total)


def session(model, threads: int = 0):
    """onnxruntime session for a converted model (path or ModelProto) with the IF op registered."""
    return ops.session(model, threads)


def run(snn_path, feeds: dict, threads: int = 0) -> dict:
    """Run a converted model on one feed dict; returns {output name: array}."""
    sess = ops.session(str(snn_path), threads)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))
