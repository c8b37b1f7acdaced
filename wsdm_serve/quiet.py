"""``-q`` for the progress bars libraries draw themselves (transformers, huggingface_hub, vLLM's
loaders, llm-compressor, compressed-tensors), in this process and in the engine processes it starts.

Most bars honour two environment variables, which :func:`hide_library_progress_bars` sets.
compressed-tensors passes ``disable=`` to tqdm itself, which wins over the variable; the only way to
keep its bars off a quiet run is to drop what is written to ``sys.stderr`` while it works
(:func:`library_bars_hidden`).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator

QUIET_VARIABLES = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")


def hide_library_progress_bars() -> None:
    """Set the variables for this process and its children.

    tqdm and huggingface_hub read them when they are imported, which for a command is after this
    runs; transformers is told directly in case something imported it already.
    """
    for name in QUIET_VARIABLES:
        os.environ[name] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def quiet_run() -> bool:
    """Whether this process runs under ``-q`` (the variables are inherited by engine processes)."""
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
