"""Tests of onnx2snn/runtime."""
