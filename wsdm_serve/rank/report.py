"""What ``rank`` writes: the leaderboard as CSV, JSON and PNG, the judgements, a markdown table.

Every file is written atomically (``outputs``); the PNG is drawn on matplotlib's Agg canvas like the
evaluation plots.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..compare import CI_LEVEL, Board
from ..outputs import atomic_write, write_frame
from .boards import Boards

LEADERBOARD_COLUMNS = (
    "model",
    "score",
    "ci_low",
    "ci_high",
    "win_rate",
    "win_rate_ci_low",
    "win_rate_ci_high",
    "n_judgements",
    "avg_length",
)
FILES = {
    "leaderboard_csv": "leaderboard.csv",
    "leaderboard_json": "leaderboard.json",
    "judgements": "judgements.parquet",
    "plot": "leaderboard.png",
}


def board_frame(board: Board, avg_length: dict[str, float]) -> pd.DataFrame:
    """One row per model, highest score first."""
    order = board.order()
    frame = pd.DataFrame(
        {
            "model": [board.models[i] for i in order],
            "score": board.score[order].round(2),
            "ci_low": board.ci_low[order].round(2),
            "ci_high": board.ci_high[order].round(2),
            "win_rate": board.win_rate[order].round(4),
            "win_rate_ci_low": board.win_rate_low[order].round(4),
            "win_rate_ci_high": board.win_rate_high[order].round(4),
            "n_judgements": board.n_judgements[order],
            "avg_length": [
                round(avg_length[board.models[i]], 1) if board.models[i] in avg_length else np.nan
                for i in order
            ],
        }
    )
    return frame[list(LEADERBOARD_COLUMNS)]


def _json_value(value):
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def board_json(board: Board, avg_length: dict[str, float], style_control: str) -> dict:
    rows = board_frame(board, avg_length).to_dict(orient="records")
    return {
        "baseline": board.baseline,
        "n_questions": board.n_questions,
        "n_judgements": int(board.n_judgements.sum() // 2),
        "resamples": board.resamples,
        "dropped_resamples": board.dropped_resamples,
        "style_coefficients": {"length": float(board.coefficients[0])} if style_control == "length" else {},
        "models": [{key: _json_value(value) for key, value in row.items()} for row in rows],
    }


def write_outputs(
    out: Path, boards: Boards, judgements: pd.DataFrame | None, settings: dict, style_control: str
) -> dict[str, str]:
    """Every output file in ``out``; returns their paths by kind."""
    written = {}
    frame = board_frame(boards.overall, boards.avg_length)
    written["leaderboard_csv"] = write_frame(frame, out / FILES["leaderboard_csv"])
    if judgements is not None:
        written["judgements"] = write_frame(judgements, out / FILES["judgements"])
    written["plot"] = plot_scores(boards.overall, out / FILES["plot"])
    document = {
        "settings": settings,
        "ci_level": CI_LEVEL,
        "overall": board_json(boards.overall, boards.avg_length, style_control),
        "groups": {
            column: {
                value: board_json(board, boards.group_lengths[column][value], style_control)
                for value, board in by_value.items()
            }
            for column, by_value in boards.groups.items()
        },
        "skipped_groups": boards.skipped,
        "files": {kind: str(path) for kind, path in written.items()},
    }
    path = out / FILES["leaderboard_json"]
    text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
    written["leaderboard_json"] = atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return {kind: str(path) for kind, path in written.items()}


def plot_scores(board: Board, path: Path) -> Path:
    """Scores with their intervals, one row per model, highest at the top."""
    from ..plots import _figure, _save

    order = board.order()[::-1]
    names = [board.models[i] for i in order]
    score, low, high = board.score[order], board.ci_low[order], board.ci_high[order]
    figure = _figure(7.0, 1.2 + 0.35 * len(names))
    axes = figure.subplots()
    errors = np.vstack([np.nan_to_num(score - low), np.nan_to_num(high - score)])
    axes.errorbar(score, range(len(names)), xerr=errors, fmt="o", color="#1f77b4", ecolor="0.4", capsize=3)
    axes.axvline(1000, linestyle="--", color="0.6", linewidth=1)
    axes.set_yticks(range(len(names)), names)
    anchor = f"{board.baseline} = 1000" if board.baseline else "mean = 1000"
    axes.set_xlabel(
        f"Bradley-Terry score, Elo scale ({anchor}); bars: {int(CI_LEVEL * 100)}% bootstrap interval"
    )
    judgements = int(board.n_judgements.sum() // 2)
    axes.set_title(f"{len(names)} models, {judgements:,} judgements of {board.n_questions:,} questions")
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, Path(path))


def markdown_table(board: Board, avg_length: dict[str, float]) -> str:
    """The overall board as a markdown table (stdout)."""
    frame = board_frame(board, avg_length)
    level = int(CI_LEVEL * 100)
    lines = [
        f"| # | model | score | {level}% CI | win rate | {level}% CI | judgements | avg length |",
        "|--:|:--|--:|:--:|--:|:--:|--:|--:|",
    ]
    for rank, row in enumerate(frame.itertuples(index=False), start=1):
        lines.append(
            f"| {rank} | {row.model} | {row.score:.1f} | {_span(row.ci_low, row.ci_high, '{:.1f}')} | "
            f"{_percent(row.win_rate)} | {_span(row.win_rate_ci_low * 100, row.win_rate_ci_high * 100, '{:.1f}')} | "
            f"{row.n_judgements} | {'' if np.isnan(row.avg_length) else f'{row.avg_length:.0f}'} |"
        )
    return "\n".join(lines)


def _span(low: float, high: float, form: str) -> str:
    return "" if np.isnan(low) or np.isnan(high) else f"{form.format(low)} to {form.format(high)}"


def _percent(value: float) -> str:
    return "" if np.isnan(value) else f"{value * 100:.1f}%"
