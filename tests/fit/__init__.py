"""Tests of onnx2snn/fit."""
