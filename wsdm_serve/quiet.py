"""``-q`` for the progress bars that no environment variable reaches.

`hide_library_progress_bars` (cli/options.py) sets ``TQDM_DISABLE`` and
``HF_HUB_DISABLE_PROGRESS_BARS``, which most bars honour. compressed-tensors passes ``disable=`` to
tqdm itself, which wins over the variable; the only way to keep its bars off a quiet run is to drop
what is written to ``sys.stderr`` while it works.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator


def quiet_run() -> bool:
    """Whether this process runs under ``-q`` (the variable it sets is inherited by engine processes)."""
    return os.environ.get("TQDM_DISABLE") == "1"


@contextlib.contextmanager
def library_bars_hidden(quiet: bool | None = None) -> Iterator[None]:
    """With ``quiet`` (default: :func:`quiet_run`), drop what libraries write to ``sys.stderr`` inside.

    tqdm looks ``sys.stderr`` up when a bar starts, so the bars go; logging handlers made earlier keep
    the real stderr, so errors still show, and an exception leaves the block before it is printed.
    """
    if not (quiet_run() if quiet is None else quiet):
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield
