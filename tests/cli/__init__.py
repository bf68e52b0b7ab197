"""Tests of onnx2snn/cli."""
