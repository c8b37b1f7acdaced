"""``rank --judgements FILE``: a judgements table read back and checked, for a board without a model.

FILE is what ``rank`` wrote (judgements.parquet: ``model_a, model_b, p_a`` and more) or people's
votes (``model_a, model_b, winner`` with ``model_a`` / ``model_b`` / ``tie``, as LMArena's data), in
parquet, csv or jsonl. Problems are one line naming the file and row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..compare import VOTE_OUTCOMES
from ..data import read_table, validate_frame
from ..errors import WsdmError


def load_judgements(path: Path, *, style_control: str = "none") -> pd.DataFrame:
    """The table at ``path``, checked: models on both sides, a probability or a vote on every row."""
    frame = read_table(path)
    if "p_a" not in frame.columns and "winner" not in frame.columns:
        raise WsdmError(
            f"{path}: needs model_a, model_b and p_a (the judge's judgements) or winner (votes); "
            f"found: {', '.join(map(str, frame.columns)) or 'none'}"
        )
    validate_frame(frame, path, required=("model_a", "model_b"))
    for column in ("model_a", "model_b"):
        nulls = np.flatnonzero(frame[column].isna().to_numpy())
        if len(nulls):
            raise WsdmError(f"{path}: row {nulls[0] + 1}: {column} is empty")
    same = np.flatnonzero((frame["model_a"].astype(str) == frame["model_b"].astype(str)).to_numpy())
    if len(same):
        raise WsdmError(
            f"{path}: row {same[0] + 1}: model_a and model_b are both {frame['model_a'].iat[same[0]]}"
        )
    if "p_a" in frame.columns:
        p_a = pd.to_numeric(frame["p_a"], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~((p_a >= 0) & (p_a <= 1)))
        if len(bad):
            raise WsdmError(
                f"{path}: row {bad[0] + 1}: p_a is {_shown(frame['p_a'].iat[bad[0]])}, expected a probability"
            )
        frame = frame.assign(p_a=p_a)
    else:
        bad = [
            i
            for i, w in enumerate(frame["winner"].tolist())
            if not isinstance(w, str) or w not in VOTE_OUTCOMES
        ]
        if bad:
            raise WsdmError(
                f"{path}: row {bad[0] + 1}: winner is {frame['winner'].iat[bad[0]]!r}, "
                f"expected one of {', '.join(VOTE_OUTCOMES)}"
            )
    if style_control == "length":
        for column in ("length_a", "length_b"):
            if column not in frame.columns:
                raise WsdmError(f"{path}: --style-control length needs columns length_a and length_b")
            lengths = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
            bad = np.flatnonzero(~(lengths >= 0))
            if len(bad):
                raise WsdmError(
                    f"{path}: row {bad[0] + 1}: {column} is {_shown(frame[column].iat[bad[0]])}, expected a length"
                )
    models = set(frame["model_a"].astype(str)) | set(frame["model_b"].astype(str))
    if len(models) < 2:
        raise WsdmError(f"{path}: judgements of {len(models)} model; ranking needs two or more")
    return frame


def _shown(value: object) -> str:
    """A cell as a message shows it: empty, a number as written, or quoted text."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "empty"
    if isinstance(value, str):
        return repr(value)
    return f"{value:g}" if isinstance(value, float | np.floating | int | np.integer) else repr(value)
