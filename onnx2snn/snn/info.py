"""What a converted model is: one dataclass written to and read from the model's metadata.

Every reader (evaluation, `run`, the delay search, reports) goes through `SNNInfo.from_metadata`,
so the metadata keys are named in this file only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import onnx

from .._version import __version__
from ..errors import UserError
from ..graph.onnx_io import get_metadata

_P = "onnx2snn."


@dataclass(frozen=True)
class Provenance:
    """Where a conversion came from (not needed to run it; stored so eval and run can default to it)."""
    preprocessing: str | None = None   # data.Preprocess JSON
    source_model: str = ""             # file name of the ANN
    delay_choice: dict | None = None   # delay.DelayChoice.to_json() when the delay was chosen from data


@dataclass(frozen=True)
class SNNInfo:
    form: str                      # "unrolled" or "loop"
    timesteps: int
    delay: int
    v_init: float
    maxpool: str
    portable: bool
    method: str                    # threshold method
    thresholds: dict               # the thresholds' info (iterations, lr, seed, ...)
    costs: dict                    # ann_macs, largest_activation, pre_macs, fanout per neuron
    neurons: list                  # {name, source, role, tensor} per neuron
    readouts: list                 # unrolled: {steps, mean}; loop: {acc, mean}
    chunk: int = 1
    early_exit: dict | None = None     # {stable_steps, margin, min_steps} when the loop exits early
    analog: list = field(default_factory=list)   # nodes kept analog between neurons (--keep-analog)
    compensated: list = field(default_factory=list)  # nodes evaluated with expectation compensation
    loop_op: str = "loop"                          # the looped form's ONNX op: Loop or Scan
    portable_steps: str = "scan"                   # portable neurons: steps "written" out, or a "scan"
    spikes: str = "binary"                         # or "burst:K" (config.SNNConfig.spikes)
    signed: bool = False                           # negative spikes (config.SNNConfig.signed)
    provenance: Provenance = field(default_factory=Provenance)
    version: str = __version__

    @property
    def max_spikes(self) -> int:
        """Spikes per neuron and step at most: K of burst:K, else 1."""
        return int(self.spikes.split(":")[1]) if self.spikes.startswith("burst:") else 1

    @property
    def neuron(self) -> str:
        """binary, burst:K, and "+signed" with negative spikes (config.SNNConfig.neuron)."""
        return self.spikes + ("+signed" if self.signed else "")

    @property
    def looped(self) -> bool:
        return self.form == "loop"

    def to_metadata(self) -> dict:
        meta = {
            "version": self.version, "form": self.form, "timesteps": self.timesteps, "delay": self.delay,
            "v_init": self.v_init, "maxpool": self.maxpool, "portable": int(self.portable),
            "method": self.method, "thresholds": json.dumps(self.thresholds, sort_keys=True),
            "costs": json.dumps(self.costs, sort_keys=True), "neurons": json.dumps(self.neurons),
            "readout": json.dumps(self.readouts),
            "source_model": self.provenance.source_model,
        }
        if self.portable:
            meta["portable_steps"] = self.portable_steps
        if self.spikes != "binary":
            meta["spikes"] = self.spikes
        if self.signed:
            meta["signed"] = 1
        if self.analog:
            meta["analog"] = json.dumps(self.analog)
        if self.compensated:
            meta["compensated"] = json.dumps(self.compensated)
        if self.looped:
            meta.update(chunk=self.chunk, early_exit=int(self.early_exit is not None), loop_op=self.loop_op)
            if self.early_exit is not None:
                meta["early_exit_rule"] = json.dumps(self.early_exit, sort_keys=True)
        if self.provenance.preprocessing is not None:
            meta["preprocessing"] = self.provenance.preprocessing
        if self.provenance.delay_choice is not None:
            meta["delay_choice"] = json.dumps(self.provenance.delay_choice, sort_keys=True)
        return {_P + k: str(v) for k, v in meta.items()}

    @staticmethod
    def from_metadata(model: onnx.ModelProto, where: str = "model") -> "SNNInfo":
        meta = {k[len(_P):]: v for k, v in get_metadata(model).items() if k.startswith(_P)}
        if "version" not in meta:
            raise UserError(f"{where}: not a model converted by onnx2snn (no onnx2snn metadata)")
        try:
            early = int(meta.get("early_exit", 0))
            return SNNInfo(
                form=meta.get("form", "unrolled"), timesteps=int(meta["timesteps"]),
                delay=int(meta.get("delay", 0)), v_init=float(meta.get("v_init", 0.5)),
                maxpool=meta.get("maxpool", "spiking"), portable=bool(int(meta.get("portable", 0))),
                method=meta.get("method", "unknown"), thresholds=json.loads(meta.get("thresholds", "{}")),
                costs=json.loads(meta.get("costs", "{}")), neurons=json.loads(meta.get("neurons", "[]")),
                readouts=json.loads(meta.get("readout", "[]")), chunk=int(meta.get("chunk", 1)),
                early_exit=json.loads(meta["early_exit_rule"]) if early else None,
                analog=json.loads(meta.get("analog", "[]")),
                compensated=json.loads(meta.get("compensated", "[]")), loop_op=meta.get("loop_op", "loop"),
                portable_steps=meta.get("portable_steps", "scan"), spikes=meta.get("spikes", "binary"),
                signed=bool(int(meta.get("signed", 0))),
                provenance=Provenance(meta.get("preprocessing"), meta.get("source_model", ""),
                                      json.loads(meta["delay_choice"]) if "delay_choice" in meta else None),
                version=meta["version"])
        except (KeyError, ValueError, TypeError) as err:
            raise UserError(f"{where}: damaged onnx2snn metadata ({type(err).__name__}: {err})") from None
