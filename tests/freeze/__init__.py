"""Tests of onnx2snn/freeze."""
