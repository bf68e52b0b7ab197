"""ANN + thresholds -> SNN, in one of the graph forms (unrolled, loop; portable or not).

    prepare.py   neuron placement, regions, readout wiring, export (shared by every form)
    timefold.py  time folded into the batch: tiling, readouts, the spiking max pool
    unrolled.py  the unrolled form           loop.py  the looped form (ONNX Loop, early exit)
    portable.py  IF neurons from standard ops          info.py  SNNInfo, the model's description
    simulate.py  the graphs evaluation runs (per-step readouts, heads, loop histories)
"""
from __future__ import annotations

from dataclasses import replace

import onnx

from ..graph.analyse import Analysis, as_analysis
from ..config import AUTO, SNNConfig
from ..errors import UserError, param
from . import loop, unrolled
from .info import Provenance, SNNInfo
from .prepare import Layer, prepare

__all__ = ["to_snn", "check", "SNNInfo", "Provenance", "Layer"]


def to_snn(model, thresholds, config: SNNConfig, provenance: Provenance | None = None):
    """(SNN ModelProto, converted layers) for a model (Analysis, ModelProto or path) in the
    configured form. `thresholds=None` uses placeholders (a dry run)."""
    analysis = as_analysis(model)
    if config.delay == AUTO:
        raise UserError(f"{param('delay')} auto: resolve it with api.convert (or delay.choose_delay) first")
    p = prepare(analysis, thresholds, config)
    form = loop if config.form == "loop" else unrolled
    return form.build(p, provenance), p.layers


def check(analysis: Analysis, config: SNNConfig) -> None:
    """Fail before calibration if the graph cannot become an SNN of the configured form: build it
    once with placeholder thresholds and as few steps as the configuration allows."""
    delay = 0 if config.delay == AUTO else config.delay
    to_snn(analysis, None, replace(config, delay=delay, timesteps=delay + 1, chunk=1))


def is_snn(model: onnx.ModelProto) -> bool:
    return any(p.key == "onnx2snn.version" for p in model.metadata_props)
