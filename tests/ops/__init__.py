"""Tests of the custom operators seen from Python (onnx2snn/ops): the op and its NumPy reference, burst and signed neurons."""
