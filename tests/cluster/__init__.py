"""Tests of onnx2snn/cluster."""
