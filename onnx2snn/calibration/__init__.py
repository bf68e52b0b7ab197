"""Thresholds from data: probes in the ANN (probes), threshold balancing streamed through
onnxruntime with the updates in NumPy (balancing: LTB, layer-wise LTB, max-norm, robust-norm), and
the thresholds themselves, validated, saved and loaded (thresholds)."""
