"""The test suite. Its folders mirror the package (tests/fit tests onnx2snn/fit, ...); tests/support
holds the helpers tests share (hand-built graphs, trained digits models, exporter scripts),
imported as `tests.support.*`; `custom_ops/` tests the C++ operators, their build and the wheel.
Run from the repository root: `python -m pytest -q tests` (unit tier: `-m "not slow"`)."""
