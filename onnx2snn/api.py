"""The Python API; the CLI is a thin layer over these functions.

    from onnx2snn import convert, evaluate_file, run, session
    result = convert("model.onnx", data="calib/")           # writes model.snn.onnx
    sess = session(result.output)                             # onnxruntime session, op registered
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from . import calibration as cal
from . import data as D
from . import evaluate as ev
from . import model as M
from . import ops
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
            write: bool = True) -> Conversion:
    """ANN file -> SNN file: load, calibrate (or reuse thresholds), rewrite, save atomically."""
    calib.validate()
    snn.validate()
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
    snn_model, layers = to_snn(model, th, snn, metadata)
    if write:
        M.save_atomic(snn_model, out_path, refuse=[model_path])
    result = Conversion(out_path if write else None, snn_model, layers, th, seconds,
                        inputs=D.model_inputs(model))
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


def auto_batch_size(snn_model: onnx.ModelProto, t_max: int, budget_mb: float = 2048) -> int:
    """Samples per simulation batch so that T_max x batch x the largest activation (a few copies
    alive at once) stays within `budget_mb` for the unrolled form; looped models use 16."""
    import json
    meta = M.get_metadata(snn_model)
    if meta.get("onnx2snn.form") == "loop":
        return 16
    largest = json.loads(meta.get("onnx2snn.costs", "{}")).get("largest_activation", 0)
    if not largest:
        return 16
    per_sample_mb = 4 * t_max * largest * 4 / 2 ** 20
    return int(max(1, min(64, budget_mb // max(per_sample_mb, 1e-9))))


def evaluate_file(snn_path, data=None, data_loader=None, ann_path=None, timesteps=(16, 32, 64),
                  batch_size: int | None = None, limit: int | None = None, prep: D.Preprocess | None = None,
                  progress: bool = False) -> ev.EvalResult:
    snn_model = load_snn(snn_path)
    ev.snn_metadata(snn_model)
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
