"""`--target speck`: does an exported NIR graph fit SynSense Speck (DYNAP-CNN cores), and how.

    check_speck(graph, info)     -> SpeckReport: the graph (to_nir's output, thresholds already
                                    folded) cut into Speck layers, each quantised to 8-bit weights
                                    with one scale per layer, checked against the layer rules and
                                    the memory of the cores; per layer what does not fit and why
    quantise_speck(graph, report) -> a copy of the graph with the integer weights, biases,
                                    thresholds and initial potentials (float32 holding integers),
                                    for nir.write and run_nir

A Speck layer (a DYNAP-CNN core) is one weight layer (nir.Conv2d, or nir.Affine/Linear, which sinabs
turns into a convolution whose kernel covers the whole input), the nir.IF it feeds, and the
SumPool2d chain(s) on the way to the next layers. Everything after the last spikes that only leads
to a readout (nir.Scale to ONNX units, pooling, Flatten) stays on the host: the chip sends the
layer's events out and the host counts and scales them.

The limits come from sinabs 3.1.3 (read, not imported: its chip modules import samna, which this
module must never load); each one names its source next to it in _LIMITS. The memory of a layer is
checked with sinabs's own validator (sinabs/validate_memory_speck.py, ValidateMapping, loaded
from its file alone: it needs only numpy) when sinabs is installed; without it the memory is
reported "not checked" and `fits` is None (nothing else broken) rather than True.

Quantisation. sinabs (backend/dynapcnn/discretize.py) scales weights and bias to 8 bits, and the
thresholds and neuron states to 16 bits, by one common factor per layer, the largest that keeps all
of them in range. We do the same with two differences: the factor is rounded down to an integer
(when it is >= 1) so that the folded threshold 1 becomes an exact integer, and the chip's lower
potential bound stays at sinabs's default -2^15 instead of entering the scale (sinabs puts
min_v_mem=None as -2^15 into its threshold tensor, which caps its scale at 1, i.e. never scales
small weights up).

Firing. This export fires where v > threshold; sinabs's model of the chip fires where
v >= threshold (activation/spike_generation.py). With integer potentials both agree if the chip
starts every neuron one unit lower: the report's `chip` entries (threshold_high,
neurons_initial_value) carry that offset; the quantised NIR graph keeps the export's rule.

    limits.py     the limits and where each comes from; sinabs's memory validator, loaded from its file
    layers.py     the graph cut into Speck layers (weight node, IF, pooling, sources, destinations)
    rules.py      layer rules, quantisation, memory and cores, per layer
    check.py      check_speck
    report.py     SpeckLayer, SpeckReport (text, to_dict)
    quantised.py  quantise_speck
"""
from .check import check_speck
from .limits import load_validator
from .quantised import quantise_speck
from .report import SpeckLayer, SpeckReport

__all__ = ["SpeckLayer", "SpeckReport", "check_speck", "load_validator", "quantise_speck"]
