"""The exception types the CLI turns into one line and exit code 1.

Their messages name the caller's parameters with `param`: a Python caller reads the parameter's
name (`delay`, `data_loader`), the command line reads its flag (`--delay`, `--data-loader`), so
an API user is never told about a flag they never typed (`render` with the CLI's names)."""
from __future__ import annotations

import re

_MARK = "\x1f"                  # brackets a parameter's name inside a message
_PARAM = re.compile(_MARK + r"([A-Za-z_][A-Za-z0-9_]*)" + _MARK)


def param(name: str) -> str:
    """The parameter `name`, as an error message names it (see the module's docstring)."""
    return f"{_MARK}{name}{_MARK}"


def render(text: str, name=lambda p: p) -> str:
    """`text` with each parameter written by `name` (default: its Python name)."""
    return _PARAM.sub(lambda m: name(m.group(1)), text)


class _Named(Exception):
    """An exception whose message may name parameters (`param`); str() gives their Python names."""

    @property
    def template(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return render(self.template)


class UserError(_Named):
    """Bad input from the user (file, flag, model or data). Bugs raise anything else."""


class InternalError(_Named):
    """onnx2snn contradicted itself (e.g. one of its operators refused inputs a conversion step
    built for it): a bug to report, named by step and node, never blamed on the user's data."""
