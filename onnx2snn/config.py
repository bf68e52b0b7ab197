"""The choices of a conversion as frozen dataclasses, validated once when built.

Build them with keywords and change them with `dataclasses.replace` (which validates again).
Error messages name the command-line flag of the offending field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .errors import UserError, param

METHODS = ("ltb", "ltb-layer", "max", "percentile")
FORMS = ("unrolled", "loop")
MAXPOOLS = ("spiking", "move")
LOOP_OPS = ("loop", "scan")
PORTABLE_STEPS = ("written", "scan")   # a portable neuron's steps: written out one by one, or a Scan
MAX_BURST = 64            # --spikes burst:K, K at most (the operator allows 1024)
CORRECTIONS = ("none", "bias", "potential", "both")
AUGMENTS = ("crop-flip", "flip", "ssd")   # calibration augmentation kinds (batches.py); True = crop-flip
AUTO = "auto"
RUNTIMES = ("onnxruntime", "openvino", "tract")   # what `run` runs a model on; the first is the default
E_SOP_PJ = 0.077   # energy per synaptic operation, 77 fJ (Bu et al.)
E_MAC_PJ = 12.5    # energy per multiply-accumulate (FLOP), 12.5 pJ
# calibration samples each step of a conversion uses (the API's and the command line's defaults)
DELAY_SAMPLES = 200      # --delay auto
CORRECT_SAMPLES = 200    # --correct
FREEZE_SAMPLES = 500     # --freeze-norm
CHECK_SAMPLES = 64       # the command line's check after converting (the API's `check_samples` defaults to none)


def _int(flag: str, value, low: int, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        bound = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise UserError(f"{flag} {value}: must be an integer {bound}")


def check_energy(e_sop, e_mac) -> None:
    """The energy constants of the estimate (pJ): finite and > 0."""
    _float(param("e_sop"), e_sop, 0.0, low_open=True)
    _float(param("e_mac"), e_mac, 0.0, low_open=True)


def _float(flag: str, value, low: float, high: float = math.inf, low_open: bool = False) -> None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag} {value}: must be a number") from None
    ok = math.isfinite(x) and (x > low if low_open else x >= low) and x <= high
    if not ok:
        rng = f"{'>' if low_open else '>='} {low}" if high == math.inf else f"in [{low}, {high}]"
        raise UserError(f"{flag} {value}: must be a finite number {rng}")


def augment_kind(augment) -> str | None:
    """The augmentation kind of a CalibConfig.augment value: None (off) or one of AUGMENTS."""
    if augment is None or augment is False or augment == "none":
        return None
    if augment is True:
        return "crop-flip"
    if isinstance(augment, str) and augment in AUGMENTS:
        return augment
    raise UserError(f"{param('augment')} {augment}: expected crop-flip, flip or ssd")


@dataclass(frozen=True)
class CalibConfig:
    """How thresholds are calibrated (docs/method/how-it-works.md, step 3)."""
    method: str = "ltb"
    iters: int = 1000
    batch_size: int | None = None   # None: 100, or the model's fixed batch size
    lr: float = 2.0
    percentile: float = 99.9
    seed: int = 0
    augment: bool | str | None = None    # None/False/"none": off; True = "crop-flip"; or "flip", "ssd"
    skip_nonfinite: bool = False    # skip (and count) batches holding NaN/Inf instead of stopping
    tune: str = "none"              # "auto": choose the calibration length for T (tuning.py)
    round_batches: int = 1          # LTB: batches measured at the same theta per update (calibration.py)

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"{param('method')} {self.method}: unknown (choose from {', '.join(METHODS)})")
        _int(param("iters"), self.iters, 1)
        if self.batch_size is not None:
            _int(param("batch_size"), self.batch_size, 1)
        _float(param("lr"), self.lr, 0.0, low_open=True)
        _float(param("percentile"), self.percentile, 0.0, 100.0)
        if not self.percentile > 0:
            raise UserError(f"{param('percentile')} {self.percentile}: must be in (0, 100]")
        _int(param("seed"), self.seed, 0)
        augment_kind(self.augment)
        _int(param("round_batches"), self.round_batches, 1)
        if self.tune not in ("none", "auto"):
            raise UserError(f"{param('tune')} {self.tune}: expected none or auto")


@dataclass(frozen=True)
class SNNConfig:
    """The spiking network to build (docs/method/how-it-works.md, steps 4-8)."""
    timesteps: int = 64
    delay: int | str = 0        # readout from step D+1; "auto": chosen from data by api.convert (see delay.py)
    v_init: float = 0.5         # initial membrane potential, fraction of theta
    maxpool: str = "spiking"    # "move": the paper's plain move (baseline; biased on spikes)
    form: str = "unrolled"      # or "loop"
    chunk: int = 1              # loop: steps per iteration (time-batched inside)
    portable: bool = False      # standard ONNX ops only (no custom domain)
    portable_steps: str = "written"   # portable neurons: each step written out (every runtime), or a Scan
    early_exit: bool = False    # loop: stop when the top-1 is stable
    exit_stable: int = 32       # ... unchanged for this many steps
    exit_margin: float = 2.0    # ... and its margin over the runner-up exceeds this (output units)
    exit_min_steps: int = 16    # ... never before this many steps
    keep_analog: bool = False   # element-wise non-ReLU ops between neurons run per step (not spiking)
    loop_op: str = "loop"       # loop form: an ONNX Loop, or a Scan over iterations (runtimes without Loop)
    correct: str = "none"       # "bias" (per channel), "potential" (per neuron), "both": correction at T
    spikes: str = "binary"      # or "burst:K": up to K spikes per neuron and step, thresholds divided by K
    signed: bool = False        # negative spikes (-θ) while a neuron's net spike count is positive
    # api.convert without an SNNConfig (and the CLI without --delay/--correct) uses delay "auto" and
    # correct "both" when it has data: see choices.data_defaults and docs/method/defaults.md.

    @property
    def max_spikes(self) -> int:
        """K of --spikes burst:K (1 for binary spikes)."""
        if self.spikes == "binary":
            return 1
        kind, _, count = str(self.spikes).partition(":")
        if kind != "burst" or not count.isdigit() or not 2 <= int(count) <= MAX_BURST:
            raise UserError(f"{param('spikes')} {self.spikes}: expected binary or burst:K with K in [2, {MAX_BURST}]")
        return int(count)

    @property
    def neuron(self) -> str:
        """The neuron in use: the spikes, "+signed" when signed (binary, burst:2+signed, ...)."""
        return self.spikes + ("+signed" if self.signed else "")

    def reference(self, **changes) -> "SNNConfig":
        """The same network in the reference form every fitting step simulates and the NIR export reads:
        unrolled, custom operators, no early exit (the neuron, T, D and v_init kept, unless `changes`)."""
        return replace(self, **{**dict(form="unrolled", chunk=1, portable=False, early_exit=False, loop_op="loop"),
                                **changes})

    def __post_init__(self):
        if self.form not in FORMS:
            raise UserError(f"{param('form')} {self.form}: expected {' or '.join(FORMS)}")
        if self.maxpool not in MAXPOOLS:
            raise UserError(f"{param('maxpool')} {self.maxpool}: expected {' or '.join(MAXPOOLS)}")
        _int(param("timesteps"), self.timesteps, 1)
        _int(param("chunk"), self.chunk, 1)
        if self.form != "loop" and self.chunk != 1:
            raise UserError(f"{param('chunk')} needs {param('form')} loop")
        if self.early_exit and self.form != "loop":
            raise UserError(f"{param('early_exit')} needs {param('form')} loop")
        if self.correct not in CORRECTIONS:
            raise UserError(f"{param('correct')} {self.correct}: expected {' or '.join(CORRECTIONS)}")
        if self.loop_op not in LOOP_OPS:
            raise UserError(f"{param('loop_op')} {self.loop_op}: expected {' or '.join(LOOP_OPS)}")
        if self.loop_op != "loop" and self.form != "loop":
            raise UserError(f"{param('loop_op')} needs {param('form')} loop")
        if self.portable_steps not in PORTABLE_STEPS:
            raise UserError(f"{param('portable_steps')} {self.portable_steps}: expected {' or '.join(PORTABLE_STEPS)}")
        if self.early_exit and self.loop_op != "loop":
            raise UserError(f"{param('early_exit')} needs {param('loop_op')} loop (a Scan cannot stop early)")
        _float(param("v_init"), self.v_init, 0.0, 1.0)
        _ = self.max_spikes            # validates --spikes
        if not isinstance(self.signed, bool):
            raise UserError(f"{param('signed')}: expected true or false, got {self.signed!r}")
        _int(param("exit_stable"), self.exit_stable, 1)
        _float(param("exit_margin"), self.exit_margin, 0.0)
        _int(param("exit_min_steps"), self.exit_min_steps, 0)
        if self.delay != AUTO:
            if isinstance(self.delay, bool) or not isinstance(self.delay, int) \
                    or not 0 <= self.delay < self.timesteps:
                raise UserError(f"{param('delay')} {self.delay}: must be 'auto' or an integer in [0, timesteps)")
