"""Tests of onnx2snn/graph."""
