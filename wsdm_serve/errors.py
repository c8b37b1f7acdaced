"""User-facing errors.

Anything raised as :class:`WsdmError` is a problem with the user's input or environment, not a bug:
the command line prints its message as one line and exits with code 2, without a traceback.
"""


class WsdmError(Exception):
    """A problem the user can fix (bad input file, missing model, missing optional dependency)."""


EXIT_USAGE = 2


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for error lines."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
