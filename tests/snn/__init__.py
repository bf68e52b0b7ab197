"""Tests of onnx2snn/snn."""
