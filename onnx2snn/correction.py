"""Post-conversion bias correction (Li et al., "A free lunch from ANN", ICML 2021; combined with
local threshold balancing in Bu et al., Table 3), done on calibration samples.

Layer by layer from the input side, each neuron's average output over the T steps (spikes are
theta-weighted, so the average is in the ANN's units) is compared with the ANN's clipped activation
(the ANN with every activation clipped at the SNN's thresholds, which the SNN's rates approach).
Their mean difference per channel becomes a constant input current added to the neuron at every
step, which shifts its average output by about that much. Each layer is corrected before the next
is measured, so later layers see corrected inputs. Statistics are per-channel sums reduced in the
graph. The corrections live in the thresholds (`Thresholds.bias`): `--thresholds` reuses them.
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


def _clipped_means(analysis: Analysis, thresholds: Thresholds, layers, shapes, batches) -> dict:
    """Per-channel mean of the ANN's clipped activation for each layer's tensor."""
    tensors = {l.tensor: shapes[l.name] for l in layers}
    model, probe_list = probes.build(analysis, "ltb", outputs=list(tensors))
    model, names = simulate.with_channel_means(model, tensors)
    fixed = {probes.LR_INPUT: np.zeros((), np.float32)}        # step 0: theta stays, y = clip(x, 0, theta)
    for pr in probe_list:
        fixed[pr.theta_input] = np.broadcast_to(np.asarray(thresholds.values[pr.name], np.float32).reshape(-1),
                                                pr.theta_shape).astype(np.float32)
    return dict(zip(tensors, _means(runtime.session(model), names, batches, fixed)))


def correct_bias(analysis: Analysis, thresholds: Thresholds, config: SNNConfig, batches) -> Thresholds:
    """Thresholds with a per-channel bias correction for every neuron at `config.timesteps`.
    `batches`: a list of feed dicts (calibration samples; reused for every layer)."""
    if not batches:
        raise UserError("--correct: received no samples")
    probe_cfg = replace(config, delay=0, form="unrolled", chunk=1, portable=False, early_exit=False,
                        loop_op="loop")
    _, layers = to_snn(analysis, thresholds, probe_cfg)
    act_of = {a.name: a for a in analysis.activations}
    shapes = {l.name: (act_of[l.source].axis, act_of[l.source].rank) for l in layers}
    ann = _clipped_means(analysis, thresholds, layers, shapes, batches)
    corrected = Thresholds(dict(thresholds.values), thresholds.method, dict(thresholds.info), bias={})
    before = []
    for layer in layers:          # input side first: each layer is measured with the earlier ones corrected
        snn, _ = to_snn(analysis, corrected, probe_cfg)
        model, names = simulate.with_channel_means(snn, {layer.tensor: shapes[layer.name]})
        (snn_mean,) = _means(runtime.session(model), names, batches)
        diff = ann[layer.tensor] - snn_mean
        before.append(float(np.abs(diff).mean()))
        corrected.bias[layer.name] = diff.astype(np.float32)
    n = sum(len(next(iter(f.values()))) for f in batches)
    corrected.info = dict(corrected.info, correction={"kind": "bias", "timesteps": config.timesteps, "samples": n,
                                                      "mean_abs_difference": round(float(np.mean(before)), 6)})
    log.info("bias correction at T=%d on %d samples: mean |difference| %.4g", config.timesteps, n, np.mean(before))
    return corrected.validate("correction")
