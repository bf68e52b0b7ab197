"""Tests of onnx2snn/conversion."""
