"""User-facing errors.

Anything raised as :class:`WsdmError` is a problem with the user's input or environment, not a bug:
the command line prints its message as one line and exits with code 2, without a traceback.
"""

from __future__ import annotations

import functools
import sys


class WsdmError(Exception):
    """A problem the user can fix (bad input file, missing model, missing optional dependency)."""


EXIT_USAGE = 2


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for error lines."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def user_errors(command):
    """Print a :class:`WsdmError` as one line on stderr and exit with code 2, without traceback
    (the wrapper of every `wsdm-serve` and `wsdm-train` command)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except WsdmError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USAGE)

    return wrapper
