"""What a conversion returns (`api.convert`), for people and, through `to_json`, for machines."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..calibration.thresholds import Thresholds
from ..evaluate.evaluation import EvalResult
from ..fit.delay import DelayChoice
from ..freeze import FrozenNorms
from ..runtime.memory import MemoryBudget
from ..snn.info import SNNInfo


@dataclass
class Conversion:
    output: Path | None
    snn: onnx.ModelProto
    layers: list
    thresholds: Thresholds
    calibration_seconds: float = 0.0
    check: EvalResult | None = None
    inputs: list = field(default_factory=list)
    delay: DelayChoice | None = None     # set when the delay was chosen from data
    report: dict | None = None           # the check's report, with report_path / plot_dir
    tune: object = None                  # tuning.TuneChoice when calib.tune == "auto"
    step_seconds: dict = field(default_factory=dict)   # "correction", "delay": seconds spent on each
    memory: MemoryBudget | None = None   # the budget the batch sizes were chosen in
    batches: dict = field(default_factory=dict)        # step -> samples per batch (those that ran)
    frozen: FrozenNorms | None = None    # --freeze-norm: the layers frozen and the error each adds
    timings: dict = field(default_factory=dict)        # each step of the conversion -> its seconds, in order

    def to_json(self) -> dict:
        """The conversion for machines (`onnx2snn convert --json`): the settings the SNN records,
        its layers with threshold statistics, the corrections, the delay, batch sizes, the check."""
        info = SNNInfo.from_metadata(self.snn)
        layers = []
        for layer in self.layers:
            th = np.asarray(layer.theta, np.float32)
            layers.append({"name": layer.name, "source": layer.source, "role": layer.role,
                           "channels": int(layer.channels or th.size), "theta_mean": float(th.mean()),
                           "theta_min": float(th.min()), "theta_max": float(th.max()),
                           "silent": int(np.sum(th == 0))})
        return {"output": str(self.output) if self.output else None, "form": info.form, "chunk": info.chunk,
                "portable": info.portable, "neuron": info.neuron, "timesteps": info.timesteps,
                "delay": info.delay, "v_init": info.v_init, "maxpool": info.maxpool, "method": self.thresholds.method,
                "calibration": {k: v for k, v in self.thresholds.info.items() if k not in ("correction", "tune")},
                "calibration_seconds": round(self.calibration_seconds, 3),
                "step_seconds": {k: round(v, 3) for k, v in self.step_seconds.items()},
                "correction": self.thresholds.info.get("correction"), "tune": self.thresholds.info.get("tune"),
                "delay_choice": self.delay.to_json() if self.delay else None,
                "memory_bytes": self.memory.bytes if self.memory else None, "batches": dict(self.batches),
                "frozen": self.frozen.to_json() if self.frozen is not None else None,
                "analog": list(info.analog), "layers": layers,
                "timings": {k: round(v, 3) for k, v in self.timings.items()},
                "check": self.check.to_json() if self.check is not None else None}
