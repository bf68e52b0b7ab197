"""Post-conversion correction (Li et al., "A free lunch from ANN", ICML 2021; combined with local
threshold balancing in Bu et al., Table 3), done on calibration samples.

Layer by layer from the input side, each neuron's average output over the T steps (spikes are
theta-weighted, so the average is in the ANN's units) is compared with the ANN's clipped activation
(the ANN with every activation clipped at the SNN's thresholds, which the SNN's rates approach).
- potential: the mean difference per neuron e becomes extra initial membrane potential T * e (the
  neuron then emits about T * e / theta more spikes of value theta over T steps);
- bias: the mean difference per channel becomes a constant input current added at every step,
  which shifts the average output by about that much. With a delayed readout (steps D..T-1) the
  SNN's averages are taken over those steps, the ones the output is read from;
- both (`--correct both`, the default): potential first, then the readout delay, then bias over the
  readout window (choices.correct_and_delay runs the steps in that order).
Each layer is corrected before the next is measured, so later layers see corrected inputs
(correcting all layers from one simulation over-corrects: measured on bench ResNet-32 at T=16, top-1
fell from 76% to 10-26%). Statistics are means reduced in the graph. The corrections live in the
thresholds (`Thresholds.bias`, `Thresholds.potential`): `--thresholds` reuses them when they were
made for the same T and kind.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from . import probes, runtime
from .analyse import Analysis
from .config import SNNConfig
from .errors import UserError
from .snn import simulate, to_snn
from .snn.timefold import theta_broadcast
from .thresholds import Thresholds

log = logging.getLogger(__name__)


def _means(sess, names, batches, fixed=None) -> list:
    """Per-channel means over all `batches` (each batch's means weighted by its size)."""
    inputs = {i.name for i in sess.get_inputs()}
    total, n = None, 0
    for feeds in batches:
        size = len(next(iter(feeds.values())))
        values = runtime.run_checked(sess, names, {**{k: v for k, v in feeds.items() if k in inputs}, **(fixed or {})},
                                     "correction")
        weighted = [v.astype(np.float64) * size for v in values]
        total = weighted if total is None else [a + b for a, b in zip(total, weighted)]
        n += size
    return [t / n for t in total]


def _clipped_means(analysis: Analysis, thresholds: Thresholds, layers, axes: dict, batches) -> dict:
    """Mean of the ANN's clipped activation over `axes[layer]` for each layer's tensor."""
    model, fixed = probes.clipped(analysis, thresholds.values, sorted({l.tensor for l in layers}))
    model, names = simulate.with_means(model, {l.tensor: axes[l.name] for l in layers})
    return dict(zip([l.tensor for l in layers], _means(runtime.session(model), names, batches, fixed)))


STEPS = {"bias": ("bias",), "potential": ("potential",), "both": ("potential", "bias")}


def correct(analysis: Analysis, thresholds: Thresholds, config: SNNConfig, batches, kind: str = "bias",
            first_step: int = 0) -> Thresholds:
    """Thresholds with a correction of `kind` ("bias" or "potential") added for every neuron at
    `config.timesteps` (on top of corrections `thresholds` already holds). `batches`: a list of feed
    dicts (calibration samples; reused per layer). `first_step`: the SNN's averages are taken over
    steps first_step..T-1 (the readout window of a delayed readout) instead of all T steps."""
    if kind not in ("bias", "potential"):
        raise UserError(f"--correct {kind}: expected bias or potential")
    if not batches:
        raise UserError("--correct: received no samples")
    t = config.timesteps
    probe_cfg = replace(config, delay=0, form="unrolled", chunk=1, portable=False, early_exit=False,
                        loop_op="loop", correct="none")
    plain = Thresholds(dict(thresholds.values), thresholds.method, dict(thresholds.info))
    _, layers = to_snn(analysis, plain, probe_cfg)
    act_of = {a.name: a for a in analysis.activations}
    rank = {l.name: act_of[l.source].rank for l in layers}
    axes = {l.name: simulate.channel_axes(act_of[l.source].axis, rank[l.name]) if kind == "bias" else [0]
            for l in layers}
    ann = _clipped_means(analysis, plain, layers, axes, batches)
    corrected = Thresholds(dict(thresholds.values), thresholds.method, dict(thresholds.info),
                           bias=dict(thresholds.bias), potential=dict(thresholds.potential))
    window = (t, first_step) if first_step else None
    before = []
    for layer in layers:          # input side first: each layer is measured with the earlier ones corrected
        snn, _ = to_snn(analysis, corrected, probe_cfg)
        model, names = simulate.with_means(snn, {layer.tensor: axes[layer.name]}, window)
        (snn_mean,) = _means(runtime.session(model), names, batches)
        diff = ann[layer.tensor] - snn_mean
        before.append(float(np.abs(diff).mean()))
        if kind == "bias":
            corrected.bias[layer.name] = (corrected.bias.get(layer.name, 0) + diff).astype(np.float32)
            continue
        start = corrected.potential.get(layer.name)
        if start is None:
            start = np.broadcast_to(theta_broadcast(layer.theta, act_of[layer.source].axis, rank[layer.name]),
                                    diff.shape) * np.float32(config.v_init)
        corrected.potential[layer.name] = (start.reshape(-1) + t * diff.reshape(-1)).astype(np.float32)
    n = sum(len(next(iter(f.values()))) for f in batches)
    done = dict(corrected.info.get("correction") or {})
    steps = [s for s in done.get("steps", []) if s["kind"] != kind]
    steps.append({"kind": kind, "first_step": first_step, "mean_abs_difference": round(float(np.mean(before)), 6)})
    kinds = {s["kind"] for s in steps}
    corrected.info = dict(corrected.info, correction={
        "kind": "both" if kinds == {"bias", "potential"} else kind, "timesteps": t, "samples": n, "steps": steps})
    log.info("%s correction at T=%d (steps %d..%d) on %d samples: mean |difference| before %.4g", kind, t,
             first_step, t - 1, n, np.mean(before))
    return corrected.validate("correction")


def stored(thresholds: Thresholds, kind: str, timesteps: int) -> bool:
    """Whether `thresholds` already hold the correction `kind` made for `timesteps` steps."""
    info = thresholds.info.get("correction") or {}
    return bool(thresholds.bias or thresholds.potential) and info.get("kind") == kind \
        and info.get("timesteps") == timesteps


def without(thresholds: Thresholds) -> Thresholds:
    """The thresholds alone, corrections dropped."""
    info = {k: v for k, v in thresholds.info.items() if k != "correction"}
    return Thresholds(dict(thresholds.values), thresholds.method, info, stats=thresholds.stats)
