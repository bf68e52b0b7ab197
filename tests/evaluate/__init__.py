"""Tests of onnx2snn/evaluate."""
