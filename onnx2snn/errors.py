"""The exception types the CLI turns into one line and exit code 1."""


class UserError(Exception):
    """Bad input from the user (file, flag, model or data). Bugs raise anything else."""


class InternalError(Exception):
    """onnx2snn contradicted itself (e.g. one of its operators refused inputs a conversion step
    built for it): a bug to report, named by step and node, never blamed on the user's data."""
