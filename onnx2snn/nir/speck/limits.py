"""Speck's limits, each with where in sinabs 3.1.3 it comes from, and sinabs's memory validator
loaded from its own file (numpy only: never the sinabs package, whose chip modules import samna)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ...errors import param

WHERE = f"{param('target')} speck"

WEIGHT_BITS = 8          # sinabs backend/dynapcnn/discretize.py: DYNAPCNN_WEIGHT_PRECISION_BITS (weights and biases)
STATE_BITS = 16          # sinabs backend/dynapcnn/discretize.py: DYNAPCNN_STATE_PRECISION_BITS (thresholds, v_mem)
THRESHOLD_LOW = -2 ** 15  # sinabs chips/dynapcnn.py get_dynapcnn_layer_config_dict: threshold_low, min_v_mem None

# Per core: (kernel memory, neuron memory, bias memory) in entries.
# sinabs backend/dynapcnn/chips/dynapcnn.py: DynapcnnConfigBuilder.get_constraints
# (also the table in sinabs/validate_memory_speck.py: ValidateMapping.verify_combined_memories).
CORES = ((16384, 65536, 1024),) * 3 + ((32768, 32768, 1024),) * 2 + ((65536, 16384, 1024),) * 2 + \
    ((16384, 16384, 1024),) * 2

LIMITS = {
    "cores": (len(CORES), "sinabs chips/dynapcnn.py: DynapcnnConfigBuilder.get_constraints (9 cores)"),
    "square_kernel": (True, ("sinabs dynapcnn_layer.py: DynapcnnLayer.__init__ and chips/dynapcnn.py: "
                             "get_dynapcnn_layer_config_dict (one kernel_size per core)")),
    "max_kernel": (16, "sinabs validate_memory_speck.py: ValidateMapping.__init__"),
    "strides": ((1, 2, 4, 8), ("sinabs validate_memory_speck.py: ValidateMapping.check_stride (each axis "
                               "checked here; sinabs accepts the layer if either axis is valid)")),
    "max_output_channels": (1024, ("sinabs validate_memory_speck.py: ValidateMapping.__init__; bias memory "
                                   "1024 per core in chips/dynapcnn.py: get_constraints")),
    "pooling": ((1, 2, 4), ("sinabs validate_memory_speck.py: ValidateMapping.__init__ (pooling 1x1, 2x2 or "
                            "4x4); square: dynapcnn_layer.py DynapcnnLayer.__init__; stride = kernel: "
                            "dynapcnn_layer_utils.py extract_pooling_from_module; chained pools multiply: "
                            "consolidate_dest_pooling")),
    "destinations": (2, ("sinabs chips/dynapcnn.py: get_dynapcnn_layer_config_dict (two destination slots "
                         "per core) and exceptions.py MaxDestinationsReached")),
    "weight_bits": (WEIGHT_BITS, "sinabs discretize.py: DYNAPCNN_WEIGHT_PRECISION_BITS (weights and biases)"),
    "state_bits": (STATE_BITS, "sinabs discretize.py: DYNAPCNN_STATE_PRECISION_BITS (thresholds, potentials)"),
    "merge": ("spike inputs summed in front of a weight layer, same shape",
              ("sinabs connectivity_specs.py (only sl.Merge joins inputs; weight -> neuron is one edge) and "
               "nir_graph_extractor.py (Merge inputs of one shape)")),
    "memory": ("kernel c*2^(ceil log2(kh*kw) + ceil log2 f), neuron f*2^(ceil log2 h + ceil log2 w)",
               ("sinabs validate_memory_speck.py ValidateMapping.calculate_total_memory (also "
                "dynapcnn_layer.py DynapcnnLayer.memory_summary); cores matched as in mapping.py get_valid_mapping")),
}


# ---- sinabs's memory validator, without importing sinabs (or samna) --------------------------------

_LOADED = {}


def load_validator():
    """sinabs's ValidateMapping class, loaded from sinabs/validate_memory_speck.py alone (numpy only;
    importing the sinabs package would need pbr and torch, and its chip modules import samna), or
    None when sinabs is not installed."""
    if "cls" in _LOADED:
        return _LOADED["cls"]
    cls = None
    spec = importlib.util.find_spec("sinabs")            # locates the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(p) / "validate_memory_speck.py" for p in locations
                 if (Path(p) / "validate_memory_speck.py").is_file()), None)
    if path is not None:
        had_samna = "samna" in sys.modules
        module_spec = importlib.util.spec_from_file_location("onnx2snn.nir._sinabs_validate_memory_speck", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
            cls = getattr(module, "ValidateMapping", None)
        except Exception:   # noqa: BLE001 - a broken or changed sinabs is reported as "not checked"
            cls = None
        if not had_samna and "samna" in sys.modules:    # must never happen: refuse to use it if it does
            cls = None
    _LOADED["cls"] = cls
    return cls


def sinabs_version():
    try:
        from importlib.metadata import version
        return version("sinabs")
    except Exception:   # noqa: BLE001
        return None
