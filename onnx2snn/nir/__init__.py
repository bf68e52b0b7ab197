"""Export of converted SNNs to NIR, the Neuromorphic Intermediate Representation (PyPI `nir` 1.0.x).

    export.py    to_nir: the unrolled SNN -> (nir.NIRGraph up to the readout, info dict)
    reading.py   the SNN's ONNX graph as the export reads it: lookups and the plan of its parts
    mapping.py   ONNX nodes as operations in NIR terms (before folding)
    folding.py   thresholds folded into the weights: the scale bookkeeping and the NIR nodes
    refusals.py  what NIR cannot express, refused by node with the reason and the way forward
    simulate.py  run_nir: a NumPy discrete-time simulation of an exported graph (the oracle the
                 tests hold the export to against onnxruntime's run of the SNN)
    files.py     .nir files with their host parts (export-nir, convert --nir), NirFile (what run-nir
                 runs), the verdict of inspect --nir
    speck.py     --target speck: 8-bit quantisation and the chip's layer and memory rules

`nir` is an optional dependency: it is imported when a function needs it, so importing this
package works without it.
"""
from .export import to_nir
from .simulate import run_nir

__all__ = ["run_nir", "to_nir"]
