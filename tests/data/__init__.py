"""Tests of onnx2snn/data."""
