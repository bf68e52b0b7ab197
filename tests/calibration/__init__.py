"""Tests of onnx2snn/calibration."""
