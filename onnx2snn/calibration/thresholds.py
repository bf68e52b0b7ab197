"""Thresholds: one float32 vector per activation, validated, saved and loaded (JSON or NPZ)."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError, param
from ..files import write_atomic

FORMAT = "onnx2snn-thresholds"
BIAS = "bias:"             # NPZ key prefix of the bias corrections
POTENTIAL = "potential:"   # NPZ key prefix of the initial potentials


@dataclass
class Thresholds:
    """theta per activation (node name -> float32 vector of length C, or 1 for one per layer)."""
    values: dict
    method: str = "ltb"
    info: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict, compare=False)   # run statistics, never saved (times)
    bias: dict = field(default_factory=dict)   # neuron name -> per-channel input current (correction.py)
    potential: dict = field(default_factory=dict)   # neuron name -> initial potential per neuron of a sample

    @staticmethod
    def placeholder(acts) -> "Thresholds":
        """Ones everywhere: lets the rewrite check a graph before anything is calibrated."""
        return Thresholds({a.name: np.ones(max(1, a.channels), np.float32) for a in acts}, "check")

    def validate(self, where: str) -> "Thresholds":
        """Every theta finite and >= 0 (0 = a channel that never fired: it stays silent)."""
        for kind, table in (("bias", self.bias), ("potential", self.potential)):
            for name, b in table.items():
                if not np.all(np.isfinite(np.asarray(b))):
                    raise UserError(f"{where}: the {kind} correction of '{name}' is not finite")
        for name, v in self.values.items():
            v = np.asarray(v)
            if v.size == 0:
                raise UserError(f"{where}: activation '{name}' has no thresholds")
            bad = ~np.isfinite(v)
            if bad.any():
                raise UserError(f"{where}: activation '{name}' has {int(bad.sum())} non-finite threshold(s) "
                                f"({v[bad][0]}); check the data for NaN/Inf and the {param('lr')}")
            if (v < 0).any():
                raise UserError(f"{where}: activation '{name}' has negative threshold(s) ({v.min()})")
        return self

    def check_against(self, acts, where: str) -> None:
        names = {a.name for a in acts}
        missing = sorted(names - set(self.values))
        if missing:
            raise UserError(f"{where}: no thresholds for activation(s) {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}")
        for a in acts:
            n = self.values[a.name].size
            if n != 1 and a.channels and n != a.channels:
                raise UserError(f"{where}: node '{a.name}' has {a.channels} channels, thresholds have {n}")

    def to_bytes(self, npz: bool) -> bytes:
        meta = {"format": FORMAT, "version": 1, "method": self.method, "info": self.info}
        if npz:
            buf = io.BytesIO()
            np.savez(buf, __meta__=np.array(json.dumps(meta, sort_keys=True)), **self.values,
                     **{BIAS + k: v for k, v in self.bias.items()},
                     **{POTENTIAL + k: v for k, v in self.potential.items()})
            return buf.getvalue()
        meta["thresholds"] = {k: [float(x) for x in np.asarray(v).reshape(-1)] for k, v in self.values.items()}
        for key, table in (("bias", self.bias), ("potential", self.potential)):
            if table:
                meta[key] = {k: [float(x) for x in np.asarray(v).reshape(-1)] for k, v in table.items()}
        return json.dumps(meta, indent=1, sort_keys=True).encode()

    def save(self, path, flag: str = param("save_thresholds")) -> Path:
        """Write JSON (or NPZ when the name ends in .npz) atomically."""
        path = Path(path)
        self.validate(f"{flag} {path}")
        return write_atomic(path, self.to_bytes(path.suffix.lower() == ".npz"), flag)

    @staticmethod
    def load(path, flag: str = param("thresholds")) -> "Thresholds":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{flag} {path}: no such file")
        where = f"{flag} {path}"
        try:
            if path.suffix.lower() == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(str(z["__meta__"])) if "__meta__" in z else {}
                    values = {k: np.asarray(z[k], np.float32).reshape(-1) for k in z.files
                              if k != "__meta__" and not k.startswith((BIAS, POTENTIAL))}
                    bias = {k[len(BIAS):]: np.asarray(z[k], np.float32).reshape(-1) for k in z.files
                            if k.startswith(BIAS)}
                    potential = {k[len(POTENTIAL):]: np.asarray(z[k], np.float32).reshape(-1) for k in z.files
                                 if k.startswith(POTENTIAL)}
            else:
                meta = json.loads(path.read_text())
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    raise ValueError("not an onnx2snn thresholds file")
                table = meta.get("thresholds")
                if not isinstance(table, dict):
                    raise ValueError("'thresholds' must map activation names to lists of numbers")
                values = {str(k): _vector(k, v) for k, v in table.items()}
                bias = {str(k): _vector(k, v) for k, v in (meta.get("bias") or {}).items()}
                potential = {str(k): _vector(k, v) for k, v in (meta.get("potential") or {}).items()}
            if not isinstance(meta, dict) or not isinstance(meta.get("info", {}), dict):
                raise ValueError("'info' must be an object")
        except (ValueError, KeyError, OSError, TypeError, UnicodeDecodeError) as err:
            raise UserError(f"{where}: cannot read thresholds ({err})") from None
        info = dict(meta.get("info", {}), file=path.name)
        return Thresholds(values, str(meta.get("method", "unknown")), info, bias=bias,
                          potential=potential).validate(where)


def _vector(name, value) -> np.ndarray:
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in items):
        raise ValueError(f"activation '{name}': expected a list of numbers, got {json.dumps(value)[:60]}")
    return np.asarray(items, np.float32).reshape(-1)
