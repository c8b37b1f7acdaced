"""From a judgements table to leaderboards: overall, per language and per category.

A judgements table holds ``model_a, model_b`` and either the judge's ``p_a`` (what ``rank`` writes
to judgements.parquet) or people's ``winner`` (``model_a`` / ``model_b`` / ``tie``, as arena data);
``question_id`` groups judgements for the bootstrap (without it every row is its own question),
``length_a, length_b`` allow length control, ``language`` and ``category`` give boards per group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..compare import (
    Board,
    Comparisons,
    NoFiniteScores,
    hard_outcomes,
    leaderboard,
    length_covariate,
    vote_outcomes,
)
from ..errors import WsdmError

GROUP_COLUMNS = ("language", "category")


@dataclass(frozen=True)
class BoardSettings:
    """How judgements become scores (the command's ``--baseline`` ... ``--style-control``)."""

    baseline: str | None = None
    outcomes: str = "soft"
    tie_margin: float = 0.0
    resamples: int = 500
    seed: int = 0
    style_control: str = "none"


@dataclass
class Boards:
    """The overall board, one per group value, and the groups that could not be drawn (and why)."""

    overall: Board
    avg_length: dict[str, float]
    groups: dict[str, dict[str, Board]] = field(default_factory=dict)
    group_lengths: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)


def comparisons_of(frame: pd.DataFrame, settings: BoardSettings, models: tuple[str, ...]) -> Comparisons:
    """The judgements of ``frame`` as :class:`Comparisons` (the frame has been checked)."""
    if "p_a" in frame.columns:
        p_a = frame["p_a"].to_numpy(dtype=np.float64)
        outcome = hard_outcomes(p_a, settings.tie_margin) if settings.outcomes == "hard" else p_a
    else:
        outcome = vote_outcomes(frame["winner"].tolist())
    covariates = None
    if settings.style_control == "length":
        covariates = length_covariate(frame["length_a"].to_numpy(), frame["length_b"].to_numpy())
    question = frame["question_id"].astype(str).tolist() if "question_id" in frame.columns else None
    return Comparisons.from_names(
        frame["model_a"].tolist(), frame["model_b"].tolist(), outcome, question, covariates, models=models
    )


def average_lengths(frame: pd.DataFrame) -> dict[str, float]:
    """Mean answer length (characters) per model, each (question, model) answer counted once."""
    if not {"length_a", "length_b"} <= set(frame.columns):
        return {}
    question = frame["question_id"] if "question_id" in frame.columns else pd.Series(range(len(frame)))
    sides = pd.concat(
        [
            pd.DataFrame(
                {
                    "question": question.values,
                    "model": frame["model_a"].values,
                    "length": frame["length_a"].values,
                }
            ),
            pd.DataFrame(
                {
                    "question": question.values,
                    "model": frame["model_b"].values,
                    "length": frame["length_b"].values,
                }
            ),
        ]
    )
    answers = sides.drop_duplicates(["question", "model"])
    return {str(k): float(v) for k, v in answers.groupby("model")["length"].mean().items()}


def draw_boards(
    frame: pd.DataFrame,
    settings: BoardSettings,
    *,
    avg_length: dict[str, float] | None = None,
    progress=None,
) -> Boards:
    """Every board of ``frame``; the overall one must exist (a one-line error otherwise), a group
    whose scores are not finite, or that lacks the baseline or a second model, is skipped."""
    models = tuple(sorted(set(frame["model_a"].astype(str)) | set(frame["model_b"].astype(str))))
    frame = frame.assign(model_a=frame["model_a"].astype(str), model_b=frame["model_b"].astype(str))
    everything = comparisons_of(frame, settings, models)
    try:
        overall = leaderboard(
            everything,
            baseline=settings.baseline,
            resamples=settings.resamples,
            seed=settings.seed,
            progress=progress,
        )
    except NoFiniteScores as exc:
        hint = (
            " (--outcomes soft, or more questions)"
            if settings.outcomes == "hard" or "winner" in frame
            else ""
        )
        raise WsdmError(f"no finite Bradley-Terry scores: {exc}{hint}") from None
    boards = Boards(overall, avg_length if avg_length is not None else average_lengths(frame))
    for column in GROUP_COLUMNS:
        if column not in frame.columns:
            continue
        values = frame[column]
        for value in sorted(values.dropna().astype(str).unique()):
            mask = (values.astype(str) == value).to_numpy() & values.notna().to_numpy()
            reason = _group_problem(everything, mask, settings.baseline)
            board = None
            if reason is None:
                try:
                    board = leaderboard(
                        everything.select(mask), baseline=settings.baseline,
                        resamples=settings.resamples, seed=settings.seed,
                    )  # fmt: skip
                except NoFiniteScores as exc:
                    reason = f"no finite scores: {exc}"
            if board is None:
                boards.skipped.append({"column": column, "value": value, "reason": reason})
            else:
                boards.groups.setdefault(column, {})[value] = board
                boards.group_lengths.setdefault(column, {})[value] = average_lengths(frame[mask])
    return boards


def _group_problem(comparisons: Comparisons, mask: np.ndarray, baseline: str | None) -> str | None:
    present = {
        comparisons.models[i] for i in np.unique(np.concatenate([comparisons.a[mask], comparisons.b[mask]]))
    }
    if len(present) < 2:
        return "fewer than two models"
    if baseline is not None and baseline not in present:
        return f"no judgement of the baseline {baseline}"
    return None
