"""The error every stage raises for bad input: the CLI prints its message as one line and exits non-zero."""


class EdgepickError(Exception):
    """Bad input or an impossible request, explained in one line."""
