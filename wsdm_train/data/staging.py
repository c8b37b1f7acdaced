"""A folder that becomes visible only when it is complete, built in resumable units.

Outputs are written into a hidden staging folder next to the destination. Each unit of work (the
folds, the student, one teacher) leaves a marker when it is finished; a run interrupted half-way
keeps its finished units and redoes only the rest, as long as its fingerprint (what the outputs
are made from) is unchanged. ``publish`` swaps the staging folder into place, so the destination
is always either the previous complete folder or the new complete one, never a mix.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsdm_serve.errors import WsdmError
from wsdm_serve.outputs import atomic_write, replace_directory

MARKERS = ".done"
STAMP = "fingerprint"


class Staging:
    """The staging folder of ``destination`` for one fingerprint."""

    def __init__(self, destination: Path, digest: str, *, fresh: bool = False) -> None:
        self.destination = destination
        self.path = destination.parent / f".{destination.name}.partial"
        stamp = self.path / STAMP
        try:
            if self.path.exists():
                same = stamp.is_file() and stamp.read_text("utf-8").strip() == digest
                if fresh or not same:
                    shutil.rmtree(self.path)
            (self.path / MARKERS).mkdir(parents=True, exist_ok=True)
            if not stamp.is_file():
                stamp.write_text(digest, "utf-8")
        except OSError as exc:
            raise WsdmError(f"{self.path}: cannot prepare the staging folder ({exc.strerror})") from exc

    def run_unit(self, key: str, work: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """``work()`` unless ``key`` finished in an earlier run; returns (its record, whether it ran).

        ``key`` is also the unit's sub-folder, which is cleared first: a unit interrupted half-way
        starts again from nothing.
        """
        marker = self.path / MARKERS / (key.replace("/", "__") + ".json")
        if marker.is_file():
            try:
                return json.loads(marker.read_text("utf-8")), False
            except ValueError:
                marker.unlink()
        target = self.path / key
        if target.is_dir():
            shutil.rmtree(target)
        started = time.time()
        record = work()
        record["seconds"] = round(time.time() - started, 3)
        atomic_write(marker, lambda tmp: tmp.write_text(json.dumps(record), "utf-8"))
        return record, True

    def publish(self) -> None:
        """Put the finished folder in place of the destination; the old one is removed afterwards."""
        (self.path / STAMP).unlink(missing_ok=True)
        shutil.rmtree(self.path / MARKERS, ignore_errors=True)
        try:
            replace_directory(self.path, self.destination)
        except OSError as exc:
            raise WsdmError(
                f"{self.destination}: cannot move the finished data into place ({exc.strerror})"
            ) from exc
