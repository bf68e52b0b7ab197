"""The package version (read by pyproject.toml and stored in every converted model)."""
__version__ = "0.1.0"
