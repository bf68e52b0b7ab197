"""Benchmarks and fixture generators. Scripts run from the repository root, as `python tools/NAME.py`
or, where they use tools.fixtures, as `python -m tools.NAME`; tools/fixtures holds the model builders
that both the tools and the tests use (the tests import them; the tools never import the tests)."""
