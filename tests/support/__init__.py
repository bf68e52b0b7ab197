"""Helpers only the tests use: the command line as a subprocess (cli) and the C++ build support
(native). The model and graph builders the tests share with tools/ live in tools/fixtures."""
