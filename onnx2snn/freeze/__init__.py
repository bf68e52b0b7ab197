"""Freezing what depends on each sample's own statistics into constants measured on calibration
data, so that it becomes linear in the spikes (`--freeze-norm`)."""
from .norms import NORM_OPS, FrozenNorms, candidates, freeze

__all__ = ["NORM_OPS", "FrozenNorms", "candidates", "freeze"]
