"""A distributed job's output as a folder of Parquet shards: one per input shard, same order."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import WsdmError
from ..outputs import atomic_directory
from ..predict import PredictResult
from ..tta import winners
from .sources import Shard


def shard_file_names(shards: list[Shard]) -> list[str]:
    """``<input name>.parquet``; numbered ``00007-<name>`` when two inputs share a name."""
    stems = [os.path.splitext(shard.uri.rstrip("/").rsplit("/", 1)[-1])[0] for shard in shards]
    if len(set(stems)) == len(stems):
        return [f"{stem}.parquet" for stem in stems]
    return [f"{number:05d}-{stem}.parquet" for number, stem in enumerate(stems)]


def check_shard_folder(out: Path) -> None:
    """Before the job: the folder is replaced whole at the end, so it may only hold an earlier output."""
    if out.exists() and not out.is_dir():
        raise WsdmError(f"{out}: is a file; --out without .csv names a folder of Parquet shards")
    if out.is_dir():
        other = [p.name for p in out.iterdir() if p.suffix != ".parquet"]
        if other:
            raise WsdmError(
                f"{out}: holds {other[0]!r}, not only Parquet shards; it would be replaced, give another --out"
            )


def write_shard_folder(result: PredictResult, shards: list[Shard], ids: list[list], out: Path) -> Path:
    """``id, winner, p_a, p_b`` per input shard, written to a hidden folder renamed into place whole."""
    check_shard_folder(out)
    names = shard_file_names(shards)
    choice = np.array(winners(result.probs))
    with atomic_directory(out) as folder:
        at = 0
        for name, shard_ids in zip(names, ids, strict=True):
            part = slice(at, at + len(shard_ids))
            frame = pd.DataFrame(
                {
                    "id": shard_ids,
                    "winner": choice[part],
                    "p_a": result.probs[part, 0],
                    "p_b": result.probs[part, 1],
                }
            )
            frame.to_parquet(folder / name, index=False)
            at += len(shard_ids)
    return out
