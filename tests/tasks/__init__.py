"""Tests of onnx2snn/tasks."""
