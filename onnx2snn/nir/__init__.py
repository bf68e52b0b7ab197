"""Export of converted SNNs to NIR, the Neuromorphic Intermediate Representation (PyPI `nir` 1.0.x).

    export.py    to_nir: the unrolled SNN -> (nir.NIRGraph up to the readout, info dict); what
                 cannot be expressed is refused with the node, the reason and the way forward
    simulate.py  run_nir: a NumPy discrete-time simulation of an exported graph (the oracle the
                 tests hold the export to against onnxruntime's run of the SNN)

`nir` is an optional dependency: it is imported when a function needs it, so importing this
package works without it.
"""
from .export import to_nir
from .simulate import run_nir

__all__ = ["run_nir", "to_nir"]
