"""The work folder: what a job has finished, kept so a killed run loses at most the unit in flight.

::

    DIR/manifest.json              input, model and settings the scores belong to (never changes)
    DIR/state.json                 seconds spent over all attempts, forward-pass seconds, TTA count
    DIR/forward/unit-000007.parquet   p_a, p_b, n_tokens of every row of unit 7, in row order
    DIR/swapped/unit-000007.parquet   row, p_a, p_b, n_tokens of the unit's rows scored swapped

Every file is written atomically (temporary name, then rename), so a run killed at any moment leaves
each unit either finished or absent. A folder whose manifest differs from the job's is refused, and
``--restart`` empties only a folder that is a work folder (or empty): pointing it at a folder of
other files by mistake never deletes them. A lock keeps two jobs out of one folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from ..errors import WsdmError
from ..outputs import atomic_write, write_frame
from . import faults
from .identity import describe_differences

FORMAT = 1
MANIFEST = "manifest.json"
STATE = "state.json"
LOCK = ".lock"


def unit_file(index: int) -> str:
    return f"unit-{index:06d}.parquet"


def write_json(path: Path, value: dict) -> None:
    """``value`` as indented, key-sorted JSON, written atomically."""
    text = json.dumps(value, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


_Folder = TypeVar("_Folder", bound="LockedFolder")


class LockedFolder:
    """A work folder held by one run (a job's, rank's): created where missing, locked until
    :meth:`close`. Subclasses set ``path`` and say in :attr:`user` whose folder it is."""

    path: Path | None
    user = "job"
    _lock = None

    def _create_and_lock(self) -> list[str]:
        """Create and lock ``path``; the names it already holds, the lock file aside."""
        path = self.path
        assert path is not None
        if path.exists() and not path.is_dir():
            raise WsdmError(f"{path}: --work-dir must be a folder, this is a file")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WsdmError(f"{path}: cannot create the work folder ({exc.strerror})") from exc
        self._lock = lock_folder(path, self.user)
        return [p.name for p in path.iterdir() if p.name != LOCK]

    def _remove(self, names: list[str]) -> None:
        """Delete these entries of ``path`` (``--restart`` on a folder known to be this kind's)."""
        assert self.path is not None
        for name in names:
            target = self.path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()

    def close(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.close()
            self._lock = None

    def __enter__(self: _Folder) -> _Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkDir(LockedFolder):
    """Finished unit scores of one job, on disk under ``path`` or, with ``path=None``, in memory only
    (a Ray job without ``--work-dir`` gathers its units the same way)."""

    def __init__(
        self, path: Path | None, manifest: dict, *, restart: bool = False, started_at: float | None = None
    ) -> None:
        """``started_at`` (a ``time.time()`` stamp) is when this attempt began, loading included."""
        self.path = None if path is None else Path(path)
        self.manifest = {"format": FORMAT, **manifest}
        self.forward: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.swapped: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        """unit -> (probabilities [k, 2], rows of the unit [k], tokens [k])"""
        self.state = {"spent_seconds": 0.0, "forward_seconds": 0.0, "tta_count": None}
        if self.path is not None:
            self._open(restart)
        self._spent_before = float(self.state["spent_seconds"])
        self._forward_before = float(self.state["forward_seconds"])
        self._attempt_started = time.time() if started_at is None else started_at
        self._forward_started: float | None = None
        self.saved = 0
        """Units saved by this attempt."""

    # ------------------------------------------------------------------------------- opening
    def _open(self, restart: bool) -> None:
        path = self.path
        assert path is not None
        others = self._create_and_lock()
        has_manifest = (path / MANIFEST).is_file()
        if others and not has_manifest:
            raise WsdmError(
                f"{path}: is not a work folder (it holds {others[0]!r} and no {MANIFEST}); "
                "give an empty or new folder to --work-dir"
            )
        if has_manifest and restart:
            self._remove(others)
            has_manifest = False
        if has_manifest:
            old = self._read_json(MANIFEST)
            if old != self.manifest:
                changes = describe_differences(old, self.manifest)
                raise WsdmError(
                    f"{path}: holds scores of another job ({'; '.join(changes[:3]) or 'format'}); "
                    "start over with --restart, or use another --work-dir"
                )
            if (path / STATE).is_file():
                self.state.update(self._read_json(STATE))
            self._load_units()
        else:
            write_json(path / MANIFEST, self.manifest)

    def _read_json(self, name: str) -> dict:
        assert self.path is not None
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WsdmError(
                f"{self.path / name}: unreadable ({exc}); start over with --restart, or use another --work-dir"
            ) from exc

    def _load_units(self) -> None:
        assert self.path is not None
        for kind, store in (("forward", self.forward), ("swapped", self.swapped)):
            folder = self.path / kind
            if not folder.is_dir():
                continue
            for file in sorted(folder.glob("unit-*.parquet")):
                try:
                    index = int(file.stem.split("-")[1])
                    frame = pd.read_parquet(file)
                except (ValueError, OSError) as exc:
                    raise WsdmError(f"{file}: unreadable ({exc}); start over with --restart") from exc
                probs = frame[["p_a", "p_b"]].to_numpy(dtype=np.float64)
                tokens = frame["n_tokens"].to_numpy(dtype=np.int64)
                if kind == "forward":
                    store[index] = (probs, tokens)
                else:
                    store[index] = (probs, frame["row"].to_numpy(dtype=np.int64), tokens)

    # ------------------------------------------------------------------------------- saving
    def save(self, scores) -> None:
        """Keep one unit's scores (``units.UnitScores``); swapped first, so a forward file on disk
        means the unit's phase-1 work (both orders under ``--tta all``) was done or is redone."""
        if scores.swapped_rows.size:
            self.swapped[scores.unit] = (scores.swapped, scores.swapped_rows, scores.swapped_tokens)
        if scores.forward is not None:
            self.forward[scores.unit] = (scores.forward, scores.n_tokens)
        if self.path is None:
            return
        if scores.swapped_rows.size:
            frame = pd.DataFrame(
                {
                    "row": scores.swapped_rows,
                    "p_a": scores.swapped[:, 0],
                    "p_b": scores.swapped[:, 1],
                    "n_tokens": scores.swapped_tokens,
                }
            )
            write_frame(frame, self.path / "swapped" / unit_file(scores.unit))
        if scores.forward is not None:
            frame = pd.DataFrame(
                {"p_a": scores.forward[:, 0], "p_b": scores.forward[:, 1], "n_tokens": scores.n_tokens}
            )
            write_frame(frame, self.path / "forward" / unit_file(scores.unit))
        self.write_state()
        self.saved += 1
        faults.after_unit_saved(self.saved)

    # ------------------------------------------------------------------------------- time
    def spent_seconds(self) -> float:
        """Seconds of this job over all attempts (a killed attempt counts up to its last save)."""
        return self._spent_before + time.time() - self._attempt_started

    def start_forward(self) -> None:
        self._forward_started = time.time()

    def forward_seconds(self) -> float:
        running = 0.0 if self._forward_started is None else time.time() - self._forward_started
        return self._forward_before + running

    def finish_forward(self) -> None:
        self._forward_before = self.forward_seconds()
        self._forward_started = None
        self.write_state()

    def set_tta_count(self, count: int) -> None:
        self.state["tta_count"] = int(count)
        self.write_state()

    def write_state(self) -> None:
        self.state["spent_seconds"] = round(self.spent_seconds(), 3)
        self.state["forward_seconds"] = round(self.forward_seconds(), 3)
        if self.path is not None:
            write_json(self.path / STATE, self.state)


def ensure_not_inside(work_dir: Path | None, *outputs: Path | None) -> None:
    """An output inside the work folder would be deleted by ``--restart``: refuse it up front."""
    if work_dir is None:
        return
    root = os.path.realpath(work_dir)
    for out in outputs:
        if out is not None and os.path.realpath(out).startswith(root + os.sep):
            raise WsdmError(f"{out}: is inside --work-dir {work_dir}; write outputs elsewhere")


def lock_folder(path: Path, user: str):
    """Hold an exclusive lock on the work folder ``path`` (a file handle; closing it releases the
    lock): two runs writing into one folder would interleave their files. ``user`` names the kind
    of run in the error (``job``, ``rank``)."""
    import fcntl

    handle = open(path / LOCK, "a+")  # noqa: SIM115 - held until the caller closes it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise WsdmError(f"{path}: another {user} is using this work folder") from None
    return handle
