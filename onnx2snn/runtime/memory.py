"""The memory budget (`--max-memory`): how many samples each run may hold at once.

Every step that runs a graph over a batch (calibration, correction, delay choice, evaluation) sizes
its batch from the budget and an estimate of the bytes one sample needs there: a number of float32
copies of the model's largest activation alive at once, times T for the unrolled SNN (time folded
into the batch). The copies are measured, not derived, and kept above what was seen: ResNet-32's
eval at T=128 peaks at 2.6 GB for 32 samples (8 copies), ResNet-50's at T=256 at 8.8 GB for one
(11 copies), the conversions at T=64 of ResNet-50 at 9.0 GB for 4 correction samples (11 copies)
and of RetinaNet's heads at 320x320 at 11.5 GB for 2 (14 copies);
`tools/bench_scale.py` prints the estimate beside the measured peak RSS.
Without `--max-memory` the budget is half of the memory the machine (or its cgroup) has available.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import UserError, param, render

SIM_COPIES = 12         # copies of the largest activation per sample and step, unrolled simulation
CORRECTION_COPIES = 16  # the correction graph: each neuron runs twice, plus its window means
ANN_COPIES = 6          # the ANN with probes (calibration) or clipped (the correction's ANN side)
DEFAULT_FRACTION = 0.5
_UNITS = {"": 1, "B": 1, "K": 2 ** 10, "KB": 2 ** 10, "KIB": 2 ** 10, "M": 2 ** 20, "MB": 2 ** 20, "MIB": 2 ** 20,
          "G": 2 ** 30, "GB": 2 ** 30, "GIB": 2 ** 30, "T": 2 ** 40, "TB": 2 ** 40, "TIB": 2 ** 40}


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes the runs of a command may use, and where the figure came from."""
    bytes: int
    source: str

    def describe(self, names=None) -> str:
        """"11.4 GiB (where it came from)"; `names` writes a parameter the source names (errors.render)."""
        size = f"{self.bytes / 2 ** 30:.1f} GiB" if self.bytes >= 2 ** 30 else f"{self.bytes / 2 ** 20:.0f} MiB"
        return f"{size} ({render(self.source, names) if names else render(self.source)})"

    def samples(self, per_sample: float, cap: int) -> int:
        """Samples per batch (1..cap) whose estimated bytes stay within the budget."""
        if per_sample <= 0:
            return cap
        return int(max(1, min(cap, self.bytes // per_sample)))

    def fits(self, per_sample: float) -> bool:
        return per_sample <= self.bytes


def parse_size(text: str, flag: str = param("max_memory")) -> int:
    """'12G', '800M', '1.5GiB', '2000000000' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS:
        raise UserError(f"{flag} {text}: expected a size such as 8G, 512M or 1.5GiB")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value < 2 ** 20:
        raise UserError(f"{flag} {text}: below 1 MiB; no batch fits")
    return value


def available_bytes() -> int:
    """Memory available to this process: MemAvailable, capped by a cgroup (v2 or v1) limit."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 4 * 2 ** 30
    for path, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(path) as f:
                limit = f.read().strip()
            with open(usage) as f:
                used = int(f.read().strip())
        except OSError:
            continue
        if limit.isdigit() and int(limit) < 2 ** 60:
            avail = min(avail, max(int(limit) - used, 0))
    return avail


def budget(max_memory=None) -> MemoryBudget:
    """The budget of `--max-memory` (bytes, a size string or a MemoryBudget), else the default."""
    if isinstance(max_memory, MemoryBudget):
        return max_memory
    if max_memory is not None:
        value = max_memory if isinstance(max_memory, int) and not isinstance(max_memory, bool) else \
            parse_size(max_memory)
        return MemoryBudget(value, param("max_memory"))
    avail = available_bytes()
    return MemoryBudget(int(avail * DEFAULT_FRACTION),
                        f"default: {DEFAULT_FRACTION:.0%} of the {avail / 2 ** 30:.1f} GiB available")


def simulation_sample_bytes(largest_activation: int, timesteps: int, copies: int = SIM_COPIES) -> float:
    """Estimated bytes per sample of an unrolled simulation at `timesteps`."""
    return float(copies) * timesteps * max(largest_activation, 1) * 4


def ann_sample_bytes(largest_activation: int, copies: int = ANN_COPIES) -> float:
    """Estimated bytes per sample of the ANN (with probes or clipped)."""
    return float(copies) * max(largest_activation, 1) * 4
