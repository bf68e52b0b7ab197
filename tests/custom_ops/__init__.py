"""Tests of the C++ operators (custom_ops/): the op contract, its fuzz, the build, the wheel, the C++ example."""
