"""The error every stage raises for bad input: the CLI prints its message as one line and exits with status 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable


class EdgepickError(Exception):
    """Bad input or an impossible request, explained in one line."""


def run_script(main: Callable[[], object], name: str | None = None) -> None:
    """Run a benchmark script's ``main``: bad input ends it with one line on stderr and exit status 2, as the CLI
    ends a stage (its ``name`` first, by default the script's), not with a traceback."""
    try:
        main()
    except EdgepickError as error:
        print(f"{name or Path(sys.argv[0]).stem}: error: {error}", file=sys.stderr)
        sys.exit(2)
