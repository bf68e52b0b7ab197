"""How many samples each step runs at once: the one owner of batch sizing.

Every step that streams data (calibration, the norm freeze, the correction, the delay choice, the
check after converting, `eval`, `run`, `run-nir`) asks a BatchPlan of its model for its batch size
and for its batches. The plan knows the model's inputs (a fixed batch size wins over every rule
below and over `--batch-size` that disagrees), the memory budget, the largest activation (what one
sample costs per step: runtime/memory.py) and the non-finite policy of the samples it reads.

The rules, each a number of samples per batch:
  * calibration: `--batch-size`, else 100 (the paper's) or fewer when the ANN with probes does not fit;
  * correction: all the samples when their correction graph (each neuron twice, all T steps) fits,
    else as many as fit; one sample at a time, with a warning, when one does not;
  * unrolled simulation (the delay choice): up to 64 within the budget, 16 without a size estimate;
  * the check after converting: the simulation's, at most 32;
  * a converted model (`eval`, `run`): the unrolled simulation's at the largest T, or up to 16
    samples of `chunk` steps for a looped model;
  * the NIR reference simulation (`run-nir`): 32.
"""
from __future__ import annotations

import logging

import onnx

from ..graph.costs import largest_activation
from ..runtime import memory as mem
from ..runtime.memory import MemoryBudget
from .batches import NonFinite, eval_batches
from .inputs import model_inputs, resolve_batch, static_batch

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 100     # the paper's calibration batch
SIMULATION_BATCH = 64       # most samples per unrolled simulation batch
UNSIZED_BATCH = 16          # samples per simulation batch when no activation size is known
CHECK_BATCH = 32            # most samples per batch of the check after converting
NIR_BATCH = 32              # samples per batch of the NIR reference simulation
UNSIZED_CORRECTION = 50     # correction samples per batch when no activation size is known


def simulation_batch(largest: int, t_max: int, memory: MemoryBudget | None = None,
                     copies: int = mem.SIM_COPIES) -> int:
    """Samples per unrolled simulation batch whose estimated bytes (`copies` float32 copies of the
    largest activation per sample and step) stay within the memory budget; at most 64."""
    if not largest:
        return UNSIZED_BATCH
    memory = memory or mem.budget()
    per_sample = mem.simulation_sample_bytes(largest, t_max, copies)
    if not memory.fits(per_sample):     # the CLI says so too (eval: EvalResult.sample_bytes)
        log.info("memory budget %s: one sample of the unrolled simulation at T=%d is estimated at %.1f GiB; "
                 "one sample per batch, its steps run in slices that fit (slice_steps)", memory.describe(), t_max,
                 per_sample / 2 ** 30)
    return memory.samples(per_sample, SIMULATION_BATCH)


def converted_batch(info, t_max: int, memory: MemoryBudget | None = None) -> int:
    """Simulation batch for a converted model (snn.info.SNNInfo; see simulation_batch); looped models
    hold `chunk` steps at a time: up to 16 samples of those within the budget."""
    largest = info.costs.get("largest_activation", 0)
    if info.looped:
        return (memory or mem.budget()).samples(mem.simulation_sample_bytes(largest, info.chunk),
                                                UNSIZED_BATCH) if largest else UNSIZED_BATCH
    return simulation_batch(largest, t_max, memory)


class BatchPlan:
    """The batch sizes of one model's steps, and its batches (see the module's docstring).
    `model`: the ModelProto whose inputs the batches feed and whose activations size them (for a
    converted model, its SNNInfo's recorded costs are used by `converted`)."""

    def __init__(self, model: onnx.ModelProto, memory: MemoryBudget | None = None,
                 nonfinite: NonFinite | None = None):
        self.inputs = model_inputs(model)
        self.fixed = static_batch(self.inputs)
        self.memory = memory or mem.budget()
        self.nonfinite = nonfinite or NonFinite()
        self._model = model
        self._largest = None

    @property
    def largest(self) -> int:
        """Elements of the largest activation per sample (0 when shapes are unknown)."""
        if self._largest is None:
            self._largest = largest_activation(self._model)
        return self._largest

    def resolve(self, requested: int | None, default: int) -> int:
        """`requested` (a --batch-size), else `default`; a fixed model batch size wins."""
        return resolve_batch(requested, self.inputs, default)

    def calibration(self, requested: int | None = None) -> int:
        default = self.memory.samples(mem.ann_sample_bytes(self.largest), CALIBRATION_BATCH)
        return self.resolve(requested, default)

    def correction(self, timesteps: int, samples: int) -> int:
        """All `samples` when their correction graph at `timesteps` fits the budget (then the correction
        equals layer-by-layer correction over the whole set), else as many as fit."""
        if not self.largest:
            return self.resolve(None, min(samples, UNSIZED_CORRECTION))
        per_sample = mem.simulation_sample_bytes(self.largest, timesteps, mem.CORRECTION_COPIES)
        return self.resolve(None, self.memory.samples(per_sample, samples))

    def warn_one_sample(self, timesteps: int) -> None:
        """Warn when one sample of the correction graph at `timesteps` exceeds the memory budget."""
        per_sample = mem.simulation_sample_bytes(self.largest, timesteps, mem.CORRECTION_COPIES)
        if not self.memory.fits(per_sample):
            log.warning("memory budget %s: one sample of the correction at T=%d is estimated at %.1f GiB, above "
                        "the budget; it runs one sample at a time (a layer's correction needs all T steps before "
                        "the next layer runs, so its steps cannot run in slices)", self.memory.describe(),
                        timesteps, per_sample / 2 ** 30)

    def simulation(self, timesteps: int, samples: int) -> int:
        """Samples per batch of an unrolled simulation of the model's SNN at `timesteps`."""
        return self.resolve(None, min(samples, simulation_batch(self.largest, timesteps, self.memory)))

    def check(self, timesteps: int) -> int:
        return self.resolve(None, min(CHECK_BATCH, simulation_batch(self.largest, timesteps, self.memory)))

    def converted(self, info, t_max: int, requested: int | None = None) -> int:
        return self.resolve(requested, converted_batch(info, t_max, self.memory))

    def nir(self, requested: int | None = None) -> int:
        return self.resolve(requested, NIR_BATCH)

    def batches(self, source, batch: int, samples: int | None = None):
        """(feeds, labels) of `source` in order, `batch` samples at a time, at most `samples`
        (batches.eval_batches; a fixed-batch model skips a short last batch)."""
        return eval_batches(source, batch, samples, exact=self.fixed is not None, nonfinite=self.nonfinite)

    def feeds(self, source, batch: int, samples: int | None = None) -> list:
        """The feed dicts of `batches`, as a list."""
        return [f for f, _ in self.batches(source, batch, samples)]
