"""Choose the readout delay D from data (delayed evaluation, Bu et al.).

A deep SNN starts with a transient: layer l cannot fire before layer l-1 has, so the readout's
first steps are biased low and the bias fades only as 1/T. Averaging steps D+1..T drops the
transient but averages fewer steps; the best D depends on the model, its thresholds and T.
`choose_delay` simulates the SNN once at T on a few samples (unrolled; every form computes the same
spikes) and picks, among D = 0 .. 3T/4, the one whose averaged output is closest to the ANN's
(relative L2 error). No labels are needed.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace

import numpy as np
import onnx

from . import evaluate as ev
from . import ops
from .errors import UserError
from .model import get_metadata
from .rewrite import SNNConfig, to_snn

log = logging.getLogger(__name__)

AUTO = "auto"


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
        err = lambda d: round(self.rel_error[d], 6) if d in self.rel_error else None
        return {"delay": self.delay, "samples": self.samples,
                "searched": [ds[0], ds[-1], ds[1] - ds[0] if len(ds) > 1 else 1] if ds else [],
                "rel_error": err(self.delay), "rel_error_at_0": err(0),
                "agreement": self.agreement.get(self.delay)}


def candidates(timesteps: int) -> list:
    """D = 0 .. 3T/4 (at least a quarter of the steps are averaged), at most ~49 values."""
    step = max(1, timesteps // 64)
    return list(range(0, 3 * timesteps // 4 + 1, step))


def choose_delay(ann: onnx.ModelProto, thresholds, config: SNNConfig, batches,
                 threads: int = 0, progress: bool = False, total: int | None = None) -> DelayChoice:
    """The readout delay for `config.timesteps` that brings the SNN's output closest to the ANN's on
    `batches` (an iterable of (feeds, labels) as data.eval_batches yields)."""
    t = config.timesteps
    probe = replace(config, delay=0, form="unrolled", chunk=1, portable=False, early_exit=False)
    snn, _ = to_snn(ann, thresholds, probe)
    readouts = json.loads(get_metadata(snn).get("onnx2snn.readout", "[]"))
    if not readouts:
        log.info("no readout tensor to delay (the spiking region reaches the outputs); D = 0")
        return DelayChoice(0, 0, {}, {})
    sim = ops.session(ev.simulation_model(snn, t, readouts, spike_counts=False)[0], threads)
    head = ops.session(ev.head_model(snn, readouts), threads)
    ann_sess = ops.session(ann, threads, custom_ops=False)
    out_name = ev.score_output(snn)
    head_inputs = {i.name for i in head.get_inputs()}
    sim_inputs = {i.name for i in sim.get_inputs()}
    ds = candidates(t)
    err = dict.fromkeys(ds, 0.0)
    agree = dict.fromkeys(ds, 0)
    den, n = 0.0, 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=f"choosing the delay (T={t})", unit="img", leave=False, disable=None)
    for feeds, _ in batches:
        feeds = {k: v for k, v in feeds.items() if k in sim_inputs}
        batch = len(next(iter(feeds.values())))
        ref = ann_sess.run([out_name], feeds)[0].astype(np.float64)
        den += float(np.sum(ref ** 2))
        steps = ops.run_checked(sim, [r["steps"] for r in readouts], feeds, "choosing the delay")
        sums = ev.running_sums(steps, t, batch)     # mean over steps D+1..T: (S[T] - S[D]) / (T - D)
        base = {k: v for k, v in feeds.items() if k in head_inputs}
        for d in ds:
            head_feeds = dict(base)
            for r, s in zip(readouts, sums):
                head_feeds[r["mean"]] = ((s[t] - s[d]) / (t - d)).astype(np.float32)
            out = head.run([out_name], head_feeds)[0].astype(np.float64)
            err[d] += float(np.sum((out - ref) ** 2))
            agree[d] += int(np.sum(ev.top1(out) == ev.top1(ref)))
        n += batch
        if bar is not None:
            bar.update(batch)
    if bar is not None:
        bar.close()
    if n == 0:
        raise UserError("--delay auto: received no samples to choose the delay from")
    if den == 0:
        return DelayChoice(0, n, {}, {})
    rel = {d: float(np.sqrt(e / den)) for d, e in err.items()}
    best = min(ds, key=lambda d: (rel[d], d))
    log.info("delay %d chosen at T=%d from %d samples (relative error %.4f; %.4f at D=0)",
             best, t, n, rel[best], rel[0])
    return DelayChoice(best, n, rel, {d: a / n for d, a in agree.items()})
