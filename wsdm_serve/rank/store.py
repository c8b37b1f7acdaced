"""``rank --work-dir``: finished judgements, kept by pair and by judge, so nothing is judged twice.

::

    DIR/rank.json                      marks the folder as rank's (format, kind)
    DIR/judge-<id>/judge.json          the judge the judgements belong to: model identity and
                                       every setting that changes a score
    DIR/judge-<id>/part-000003.parquet key, p_a_forward, p_a_swapped, n_tokens (pairs.py)

A judgement is keyed by its pair's texts (``pairs.pair_key``), so a run that adds a model or a
question judges only the pairs it has not seen, whatever the models are called; a
judge with other settings (another model, truncation, engine, precision) gets a folder of its own.
Each part is written atomically as a chunk of pairs finishes: a killed run loses at most the chunk
in flight. As in ``predict --work-dir`` (``jobs/workdir.py``), a lock keeps two runs out of one
folder, and ``--restart`` empties only a folder that is rank's (or empty).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from ..errors import WsdmError
from ..jobs import faults
from ..jobs.workdir import LockedFolder, write_json
from ..outputs import write_frame
from .pairs import JUDGED_COLUMNS

FORMAT = 1
MARK = "rank.json"


def judge_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class JudgementStore(LockedFolder):
    """Judgements of one judge (``identity``), in memory and, with a ``path``, on disk."""

    user = "rank"

    def __init__(self, path: Path | None, identity: dict, *, restart: bool = False) -> None:
        self.path = None if path is None else Path(path)
        self.identity = identity
        self.frames: list[pd.DataFrame] = []
        self._parts = 0
        self.saved = 0
        """Parts saved by this run."""
        if self.path is not None:
            self._open(restart)

    @property
    def folder(self) -> Path:
        assert self.path is not None
        return self.path / f"judge-{judge_id(self.identity)}"

    def _open(self, restart: bool) -> None:
        path = self.path
        assert path is not None
        others = self._create_and_lock()
        marked = (path / MARK).is_file()
        if others and not marked:
            raise WsdmError(
                f"{path}: is not a rank work folder (it holds {sorted(others)[0]!r} and no {MARK}); "
                "give an empty or new folder to --work-dir"
            )
        if marked and json.loads((path / MARK).read_text()).get("kind") != "rank":
            raise WsdmError(f"{path}: {MARK} is not rank's; give another --work-dir")
        if marked and restart:
            self._remove(others)
        write_json(path / MARK, {"format": FORMAT, "kind": "rank"})
        folder = self.folder
        if (folder / "judge.json").is_file():
            self._load(folder)
        else:
            write_json(folder / "judge.json", self.identity)

    def _load(self, folder: Path) -> None:
        for file in sorted(folder.glob("part-*.parquet")):
            try:
                frame = pd.read_parquet(file, columns=list(JUDGED_COLUMNS))
                self._parts = max(self._parts, int(file.stem.split("-")[1]))
            except (ValueError, OSError, KeyError) as exc:
                raise WsdmError(f"{file}: unreadable ({exc}); start over with --restart") from exc
            self.frames.append(frame)

    def known(self) -> set[str]:
        """Keys of every judgement kept."""
        return {key for frame in self.frames for key in frame["key"]}

    def judgements(self) -> pd.DataFrame:
        if not self.frames:
            return pd.DataFrame({column: [] for column in JUDGED_COLUMNS})
        return pd.concat(self.frames, ignore_index=True)

    def add(self, judged: pd.DataFrame) -> None:
        """Keep a finished chunk (:data:`JUDGED_COLUMNS`); on disk it is one atomic part file."""
        judged = judged[list(JUDGED_COLUMNS)]
        self.frames.append(judged)
        if self.path is not None:
            self._parts += 1
            write_frame(judged, self.folder / f"part-{self._parts:06d}.parquet")
            self.saved += 1
            faults.after_unit_saved(self.saved)  # tests stop a run here to kill it mid-job
