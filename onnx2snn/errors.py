"""The one exception type for user mistakes; the CLI prints it as one line and exits 1."""


class UserError(Exception):
    """Bad input from the user (file, flag, model or data). Bugs raise anything else."""
