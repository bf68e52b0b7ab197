"""Tests of onnx2snn/nir."""
