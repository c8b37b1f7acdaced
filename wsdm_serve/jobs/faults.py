"""Faults on purpose, for the tests that prove a job survives them (the one place that reads them).

``WSDM_JOBS_FAULT`` is unset in normal use. The tests set it to
``exit-at-batch=N:MARKER``: a scoring actor ends its own process (``os._exit``, as a crash or a lost
node would) at its N-th batch, once per MARKER file, so Ray's retry is what the test sees; or
``hold-after-units=N``: a local job stops moving after saving N units, so a test can SIGKILL it
mid-job at a moment it knows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

VARIABLE = "WSDM_JOBS_FAULT"


def _setting(name: str) -> str | None:
    value = os.environ.get(VARIABLE, "")
    key, _, rest = value.partition("=")
    return rest if key == name else None


def at_actor_batch(count: int) -> None:
    """Called by a scoring actor before its ``count``-th batch (1-based)."""
    rest = _setting("exit-at-batch")
    if rest is None:
        return
    number, _, marker = rest.partition(":")
    if count == int(number) and marker and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)


def after_unit_saved(count: int) -> None:
    """Called by a local job after it saved its ``count``-th unit of this attempt."""
    rest = _setting("hold-after-units")
    if rest is not None and count >= int(rest):
        while True:
            time.sleep(1)


def forwarded() -> dict:
    """Ray ``runtime_env`` entries that carry a fault set on the driver to the actors (workers started
    before it was set would not see it); nothing when none is set."""
    value = os.environ.get(VARIABLE)
    return {"runtime_env": {"env_vars": {VARIABLE: value}}} if value else {}
