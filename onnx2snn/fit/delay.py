"""Choose the readout delay D from data (delayed evaluation, Bu et al.).

A deep SNN starts with a transient: layer l cannot fire before layer l-1 has, so the readout's
first steps are biased low and the bias fades only as 1/T. Averaging steps D+1..T drops the
transient but averages fewer steps; the best D depends on the model, its thresholds and T.
`choose_delay` simulates the SNN once at T on a few samples (unrolled; every form computes the same
spikes) and picks, among D = 0 .. 3T/4, the one whose averaged output is closest to the ANN's
(relative L2 error). No labels are needed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ..graph.analyse import Analysis
from ..config import SNNConfig
from ..evaluate.evaluation import delay_candidates as candidates, window_scores  # noqa: F401 (candidates: API)
from ..snn import to_snn
from ..snn.info import SNNInfo

log = logging.getLogger(__name__)


@dataclass
class DelayChoice:
    delay: int
    samples: int
    rel_error: dict      # candidate D -> relative L2 error of the SNN's output vs the ANN's
    agreement: dict      # candidate D -> top-1 agreement with the ANN

    def to_json(self) -> dict:
        """For the model's metadata: the choice, the searched range [first, last, step] and the
        relative error at the chosen D and at D = 0 (null when nothing was searched)."""
        ds = sorted(self.rel_error)
        err = lambda d: round(self.rel_error[d], 6) if d in self.rel_error else None  # noqa: E731
        return {"delay": self.delay, "samples": self.samples,
                "searched": [ds[0], ds[-1], ds[1] - ds[0] if len(ds) > 1 else 1] if ds else [],
                "rel_error": err(self.delay), "rel_error_at_0": err(0),
                "agreement": self.agreement.get(self.delay)}


def choose_delay(analysis: Analysis, thresholds, config: SNNConfig, batches, threads: int = 0,
                 progress: bool = False, total: int | None = None, rider=None, memory=None,
                 engine=None) -> DelayChoice:
    """The readout delay for `config.timesteps` that brings the SNN's output closest to the ANN's on
    `batches` (an iterable of (feeds, labels) as batches.eval_batches yields). `rider`: a
    correction.Corrector measured in the same simulation; the SNN scored is then the one it
    corrects in the graph. `memory`: the budget the simulation keeps to (evaluate.window_scores);
    `engine`: a cluster that runs the batches (cluster/)."""
    t = config.timesteps
    probe = config.reference(delay=0)
    snn, _ = to_snn(analysis, thresholds, probe)
    info = SNNInfo.from_metadata(snn)
    if not info.readouts:
        log.info("no readout tensor to delay (the spiking region reaches the outputs); D = 0")
        return DelayChoice(0, 0, {}, {})
    ds = candidates(t)
    windows = [(t, d) for d in ds]
    desc = f"{rider.kind} correction and the delay (T={t})" if rider is not None else f"choosing the delay (T={t})"
    scores, _, _, _ = window_scores(snn, info, windows, batches, analysis.model, spike_counts=False,
                                    threads=threads, total=total, desc=desc if progress else None, rider=rider,
                                    memory=memory, engine=engine,
                                    what=f"{rider.kind} correction and delay choice" if rider else "delay choice")
    if scores.err_den == 0:
        return DelayChoice(0, scores.n, {}, {})
    rel = {d: scores.rel_error((t, d)) for d in ds}
    best = min(ds, key=lambda d: (rel[d], d))
    log.info("delay %d chosen at T=%d from %d samples (relative error %.4f; %.4f at D=0)",
             best, t, scores.n, rel[best], rel[0])
    return DelayChoice(best, scores.n, rel, {d: scores.agreement((t, d)) for d in ds})
