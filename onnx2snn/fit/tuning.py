"""T-aware calibration: choose the calibration length for the SNN's T from calibration data alone.

LTB's thresholds keep growing with more batches: fewer batches (lower thresholds) suit small T,
more suit large T (Bu et al., Fig. 3c). Calibration keeps snapshots of the thresholds at T-independent
iteration counts; each snapshot's SNN at T is scored against the ANN (relative L2 error of the
outputs, no labels) on calibration samples held back from calibration, at the readout delay the
configuration asks for (with `--delay auto` the best one for that snapshot), and the closest wins.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ..graph.analyse import Analysis
from ..config import AUTO, SNNConfig
from .delay import choose_delay
from ..evaluate.evaluation import window_scores
from ..snn import to_snn
from ..snn.info import SNNInfo

log = logging.getLogger(__name__)


def snapshot_points(iters: int) -> tuple:
    """iters/8, iters/4, iters/2 and iters (distinct, at least 1)."""
    return tuple(sorted({max(1, iters // d) for d in (8, 4, 2, 1)}))


@dataclass
class TuneChoice:
    iters: int
    errors: dict          # iteration count -> relative L2 error of the SNN's output at T
    delays: dict          # iteration count -> the delay it was scored at

    def to_json(self) -> dict:
        return {"iters": self.iters, "rel_error": {str(k): round(v, 6) for k, v in self.errors.items()},
                "delay": {str(k): v for k, v in self.delays.items()}}


def _error(analysis: Analysis, thresholds, config: SNNConfig, batches) -> tuple:
    """(relative output error at T, delay) of the SNN with these thresholds on `batches`."""
    if config.delay == AUTO:
        choice = choose_delay(analysis, thresholds, config, batches)
        err = choice.rel_error.get(choice.delay)
        return (float("inf") if err is None else err), choice.delay
    probe = config.reference()
    snn, _ = to_snn(analysis, thresholds, probe)
    scores, _, _, _ = window_scores(snn, SNNInfo.from_metadata(snn), [(config.timesteps, config.delay)], batches,
                                    analysis.model, spike_counts=False)
    err = scores.rel_error((config.timesteps, config.delay))
    return (float("inf") if err is None else err), config.delay


def choose_snapshot(analysis: Analysis, snapshots: dict, config: SNNConfig, batches) -> TuneChoice:
    """The snapshot (iteration count -> Thresholds) whose SNN at T is closest to the ANN."""
    errors, delays = {}, {}
    for iters, th in sorted(snapshots.items()):
        errors[iters], delays[iters] = _error(analysis, th, config, batches)
        log.info("snapshot after %d batches: relative output error %.4f at T=%d (D=%d)", iters, errors[iters],
                 config.timesteps, delays[iters])
    best = min(errors, key=lambda k: (errors[k], -k))
    return TuneChoice(best, errors, delays)
