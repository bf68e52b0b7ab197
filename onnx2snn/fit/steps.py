"""What a conversion fits to the SNN's T on calibration samples (labels never used): the readout
delay (delay.py) and the corrections (correction.py), in the order `convert` runs them, and the
defaults that depend on whether there is data at all (docs/method/defaults.md).
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

from ..data import batches as Bt
from ..data.plan import BatchPlan
from .. import data as D
from .. import runtime
from ..graph.analyse import as_analysis
from ..config import AUTO, CORRECTIONS, DELAY_SAMPLES, CalibConfig, SNNConfig
from .correction import STEPS, Corrector, correct, stored, without
from .delay import DelayChoice, choose_delay
from ..errors import UserError, param
from ..runtime.memory import MemoryBudget
from ..calibration.thresholds import Thresholds

log = logging.getLogger(__name__)


def simulation_batches(source, model, timesteps: int, samples: int, skip_nonfinite: bool = False,
                       memory: MemoryBudget | None = None):
    """Up to `samples` samples of `source` (a fixed random subset) in batches sized for simulating
    `model`'s SNN at `timesteps` within the memory budget (the model's fixed batch size if it has one)."""
    plan = BatchPlan(model, memory, Bt.NonFinite(skip_nonfinite))
    return plan.batches(source, plan.simulation(timesteps, samples), samples)


def batches_used(model, calib: CalibConfig, snn: SNNConfig, calibrated: bool, step_seconds: dict,
                  correct_samples: int, delay_samples: int, memory: MemoryBudget, th_info: dict) -> dict:
    """Samples per batch of each step that ran (the sizes the steps chose within `memory`)."""
    plan, used = BatchPlan(model, memory), {}
    if calibrated:
        used["calibration"] = plan.calibration(calib.batch_size)
    if "correction" in step_seconds:
        used["correction"] = min(plan.correction(snn.timesteps, correct_samples),
                                 (th_info.get("correction") or {}).get("samples", correct_samples))
    if "delay" in step_seconds:
        used["delay choice"] = plan.simulation(snn.timesteps, delay_samples)
    return used


def choose_delay_on(analysis, thresholds, snn: SNNConfig, source, samples: int = DELAY_SAMPLES,
                    threads: int = 0, progress: bool = False, skip_nonfinite: bool = False,
                    memory: MemoryBudget | None = None, engine=None) -> DelayChoice:
    """The readout delay for `snn.timesteps`, chosen on `samples` samples of `source` (a fixed random
    subset when it holds more; the first batches of a loader script)."""
    analysis = as_analysis(analysis)
    batches = simulation_batches(source, analysis.model, snn.timesteps, samples, skip_nonfinite, memory)
    total = min(samples, len(source)) if isinstance(source, D.Source) else None
    return choose_delay(analysis, thresholds, snn, batches, threads, progress, total, memory=memory, engine=engine)


def data_defaults(have_data: bool, thresholds=None, timesteps: int = SNNConfig.timesteps) -> dict:
    """The delay and correction a conversion uses when not told (docs/method/defaults.md): with data,
    delay "auto" and correction "both"; without, the correction the thresholds (a Thresholds or a
    file) hold for `timesteps` with the delay it was made for, else no correction and delay 0."""
    if have_data:
        return {"delay": AUTO, "correct": "both"}
    plain = {"delay": 0, "correct": "none"}
    if thresholds is None:
        return plain
    try:
        th = thresholds if isinstance(thresholds, Thresholds) else Thresholds.load(thresholds)
    except UserError:          # convert reports the file's problem in its own order
        return plain
    kind = (th.info.get("correction") or {}).get("kind")
    if kind in CORRECTIONS and stored(th, kind, timesteps):
        return {"delay": int(th.info["correction"].get("delay", 0)), "correct": kind}
    return plain


RIDE_BATCH = 32     # correction batches at least this large carry the delay choice that sets the bias window


def _steps_to_run(th: Thresholds, snn: SNNConfig, source) -> tuple:
    """(thresholds, correction steps to measure): a correction the thresholds hold for this T, kind and
    neuron is reused (no steps); any other is dropped first."""
    steps = STEPS.get(snn.correct, ())
    if snn.correct == "none" or not stored(th, snn.correct, snn.timesteps, snn.neuron):
        if th.bias or th.potential:
            log.info("dropping the thresholds' %s correction (%s at T=%s with %s spikes asked)",
                     (th.info.get("correction") or {}).get("kind", "stored"), snn.correct, snn.timesteps, snn.neuron)
        th = without(th)
    else:
        steps = ()
    if steps and source is None:
        raise UserError(f"{param('correct')} {snn.correct}: needs {param('data')} (or thresholds saved with this "
                        f"correction at "
                        f"T={snn.timesteps})")
    return th, steps


def _correction_feeds(analysis, snn: SNNConfig, source, steps, samples: int, skip_nonfinite: bool,
                      memory: MemoryBudget | None, engine) -> tuple:
    """(the correction's batches, their sizes): a list of feed dicts, or, on a cluster, batches its
    workers read themselves (the same samples, by index)."""
    if not steps:
        return [], []
    plan = BatchPlan(analysis.model, memory, Bt.NonFinite(skip_nonfinite))
    batch = plan.correction(snn.timesteps, samples)
    plan.warn_one_sample(snn.timesteps)
    if engine is not None and isinstance(source, D.Source) and not skip_nonfinite:
        batches = plan.batches(source, batch, samples)
        return batches, [len(c) for c in batches.plan]
    feeds = plan.feeds(source, batch, samples)
    return feeds, [len(next(iter(f.values()))) for f in feeds]


def correct_and_delay(analysis, th: Thresholds, snn: SNNConfig, source, correct_samples: int, delay_samples: int,
                       progress: bool, skip_nonfinite: bool = False, memory: MemoryBudget | None = None,
                       engine=None):
    """(thresholds with the correction `snn.correct`, the delay choice or None, seconds per step).

    Order: potential correction (all T steps), the readout delay (`--delay auto`), bias correction
    over the readout window, and the delay chosen again for the corrected network. A correction
    the thresholds already hold for this T and kind is reused; any other is dropped first. With
    `--delay auto` and as many delay samples as correction samples (the defaults: 200 each, the same
    fixed subset), each correction and the delay choice after it share one simulation, so `both`
    costs two simulations at T instead of four.

    The delay written is always chosen on the network written, so that a replay from the saved
    thresholds chooses it again bit for bit: a simulation that rides along scores each batch's own
    in-graph correction, which is the correction written only when one batch holds every sample.
    When the memory budget (or a model's fixed batch size) splits the correction into batches, the
    potential correction's rider still sets the bias correction's readout window (with batches of
    at least RIDE_BATCH samples; smaller ones fit each batch too closely for the delay scored on it),
    and the final delay is chosen in a simulation of its own after the last correction. `engine`: a
    cluster whose workers run the simulations' batches (cluster/); the same results."""
    seconds = {}
    th, steps = _steps_to_run(th, snn, source)
    feeds, sizes = _correction_feeds(analysis, snn, source, steps, correct_samples, skip_nonfinite, memory, engine)

    def timed(key, fn, name):
        start = time.perf_counter()
        with runtime.step(name, analysis.model):
            out = fn()
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
        return out

    choice = None
    auto = snn.delay == AUTO
    same = auto and delay_samples == correct_samples and bool(sizes)
    # a rider's delay is final when one batch holds every sample (its network is the one written); with
    # batches, the potential correction's rider only sets the bias window, from batches of RIDE_BATCH or more
    final_ride = same and len(sizes) == 1
    window_ride = same and "bias" in steps and min(sizes[:-1] or sizes) >= RIDE_BATCH

    def corrected(kind, first, th, ride):
        """(thresholds with correction `kind`, the delay chosen in the same simulation or None)."""
        if not ride:
            return correct(analysis, th, snn, feeds, kind, first_step=first, progress=progress, engine=engine), None
        rider = Corrector(analysis, th, snn, kind, first)
        pairs = feeds.without_labels() if isinstance(feeds, Bt.EvalBatches) else [(f, None) for f in feeds]
        found = choose_delay(analysis, th, snn, pairs, progress=progress, total=sum(sizes), rider=rider,
                             engine=engine)
        return rider.result(), found

    if "potential" in steps:
        th, choice = timed("correction", lambda: corrected("potential", 0, th, final_ride or window_ride),
                           "potential correction")
    if auto and choice is None:
        choice = timed("delay", lambda: choose_delay_on(analysis, th, snn, source, delay_samples, progress=progress,
                                                          skip_nonfinite=skip_nonfinite, memory=memory, engine=engine),
                       "delay choice")
    if "bias" in steps:
        first = choice.delay if choice is not None else snn.delay
        th, again = timed("correction", lambda: corrected("bias", first, th, final_ride), "bias correction")
        choice = again or choice
        if auto and again is None:
            choice = timed("delay", lambda: choose_delay_on(analysis, th, snn, source, delay_samples,
                                                            progress=progress, skip_nonfinite=skip_nonfinite,
                                                            memory=memory, engine=engine),
                           "delay choice (after the bias correction)")
    if th.bias or th.potential:      # the readout the correction was made for, reused without data
        fix = dict(th.info.get("correction") or {}, delay=choice.delay if choice is not None else snn.delay)
        th = replace(th, info=dict(th.info, correction=fix))
    return th, choice, seconds
