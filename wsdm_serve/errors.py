"""User-facing errors.

Anything raised as :class:`WsdmError` is a problem with the user's input or environment, not a bug:
the command line prints its message as one line and exits with code 2, without a traceback.
"""


class WsdmError(Exception):
    """A problem the user can fix (bad input file, missing model, missing optional dependency)."""


EXIT_USAGE = 2
