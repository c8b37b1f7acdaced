"""Evaluate the judge on a labelled table: labels, probabilities, metrics, report.

Probabilities come either from scoring the table with a model (every row in both orders, so the
report holds the judge without TTA, with TTA, and how often the two orders agree) or from a
probability file written earlier (``--save-probs``), which needs no model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics
from .errors import WsdmError
from .outputs import atomic_write
from .tta import combine_swapped

TIE = -1
LMSYS_LABELS = ("winner_model_a", "winner_model_b", "winner_tie")
WINNER_VALUES = {"model_a": 0, "model_b": 1, "tie": TIE, "tie (bothbad)": TIE}
PROB_COLUMNS = ("p_a", "p_b")
SWAPPED_COLUMNS = ("p_a_swapped", "p_b_swapped")
DEFAULT_LENGTH_EDGES = (512, 1024, 2048, 4096)
VARIANT_TITLES = {"no_tta": "no TTA", "tta": "TTA", "given": "probs"}


def labels_from_frame(frame: pd.DataFrame, source: str | Path) -> np.ndarray:
    """0 = A won, 1 = B won, -1 = tie, from ``winner`` or the LMSYS one-hot columns."""
    if "winner" in frame.columns:
        labels = np.empty(len(frame), dtype=np.int8)
        for position, value in enumerate(frame["winner"].tolist()):
            key = str(value).strip().lower() if isinstance(value, str) else None
            if key not in WINNER_VALUES:
                raise WsdmError(
                    f"{source}: row {position + 1}: winner is {value!r}; expected model_a, model_b or tie"
                )
            labels[position] = WINNER_VALUES[key]
        return labels
    if all(column in frame.columns for column in LMSYS_LABELS):
        onehot = np.zeros((len(frame), 3), dtype=np.int64)
        for k, column in enumerate(LMSYS_LABELS):
            values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isin(values, (0.0, 1.0))
            if bad.any():
                row = int(np.nonzero(bad)[0][0])
                raise WsdmError(
                    f"{source}: row {row + 1}: {column} is {frame[column].iloc[row]!r}; expected 0 or 1"
                )
            onehot[:, k] = values.astype(np.int64)
        wrong = onehot.sum(axis=1) != 1
        if wrong.any():
            row = int(np.nonzero(wrong)[0][0])
            raise WsdmError(
                f"{source}: row {row + 1}: exactly one of {', '.join(LMSYS_LABELS)} must be 1, "
                f"found {onehot[row].tolist()}"
            )
        return np.array([0, 1, TIE], dtype=np.int8)[onehot.argmax(axis=1)]
    raise WsdmError(
        f"{source}: no labels; expected a winner column (model_a / model_b) or the columns "
        f"{', '.join(LMSYS_LABELS)} (found: {', '.join(map(str, frame.columns))})"
    )


@dataclass
class Scored:
    """Everything metrics need, one entry per evaluated (non-tie) row."""

    ids: list
    labels: np.ndarray
    forward: np.ndarray  # [n, 2] P(letter A), P(letter B) on the prompts as given
    swapped: np.ndarray | None  # [n, 2] the same on the swapped prompts, or None
    n_tokens: np.ndarray | None
    languages: list[str] | None


def read_probs(path: str | Path, ids: Sequence, source: str | Path) -> dict[str, np.ndarray | None]:
    """Probabilities of a ``--save-probs`` (or `predict --probs`) file, aligned to ``ids``."""
    from .data import read_table

    frame = read_table(path)
    missing = [c for c in ("id", *PROB_COLUMNS) if c not in frame.columns]
    if missing:
        raise WsdmError(f"{path}: missing column(s) {', '.join(missing)} (expected id, p_a, p_b)")
    has_swapped = [c in frame.columns for c in SWAPPED_COLUMNS]
    if any(has_swapped) and not all(has_swapped):
        raise WsdmError(f"{path}: p_a_swapped and p_b_swapped must come together")
    keys = frame["id"].astype(str)
    duplicated = keys.duplicated()
    if duplicated.any():
        raise WsdmError(f"{path}: duplicate id {keys[duplicated].iloc[0]!r}")
    position = pd.Series(np.arange(len(frame)), index=keys.to_numpy())
    wanted = [str(i) for i in ids]
    absent = [i for i in wanted if i not in position.index]
    if absent:
        raise WsdmError(
            f"{path}: no probabilities for {len(absent)} labelled row(s) of {source} (e.g. id {absent[0]}); "
            "score the same rows, or evaluate the table these probabilities came from"
        )
    order = position.loc[wanted].to_numpy()
    result: dict[str, np.ndarray | None] = {
        "forward": _prob_pair(frame, PROB_COLUMNS, order, path),
        "swapped": _prob_pair(frame, SWAPPED_COLUMNS, order, path) if all(has_swapped) else None,
        "n_tokens": None,
    }
    if "n_tokens" in frame.columns:
        result["n_tokens"] = (
            pd.to_numeric(frame["n_tokens"], errors="raise").to_numpy()[order].astype(np.int64)
        )
    return result


def _prob_pair(frame: pd.DataFrame, columns: tuple[str, str], order: np.ndarray, path) -> np.ndarray:
    """Two columns as float [n, 2]; each row must be a probability pair (sums to 1 within 1e-3)."""
    pair = np.stack(
        [pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64) for c in columns], axis=1
    )
    bad = ~np.isfinite(pair).all(axis=1) | (pair < 0).any(axis=1) | (np.abs(pair.sum(axis=1) - 1) > 1e-3)
    if bad.any():
        row = int(np.nonzero(bad)[0][0])
        raise WsdmError(
            f"{path}: row {row + 1}: {columns[0]}, {columns[1]} = {pair[row].tolist()} is not a pair of "
            "probabilities that sums to 1"
        )
    pair = pair / pair.sum(axis=1, keepdims=True)
    return pair[order]


@dataclass
class LabelledTable:
    """The rows that are evaluated (ties removed) and what was set aside."""

    frame: pd.DataFrame
    labels: np.ndarray
    rows_read: int
    ties: int


def load_labelled(path: str | Path, limit: int | None = None) -> LabelledTable:
    """Read a labelled table (first ``limit`` rows if given) and drop ties, counting them."""
    from .data import read_table, validate_frame

    frame = read_table(path)
    if limit is not None:
        frame = frame.head(limit)
    validate_frame(frame, path, required=("id",))
    labels = labels_from_frame(frame, path)
    keep = labels != TIE
    if not keep.any():
        raise WsdmError(f"{path}: all {len(frame)} rows are ties; nothing to evaluate")
    return LabelledTable(
        frame=frame.loc[keep].reset_index(drop=True),
        labels=labels[keep],
        rows_read=len(frame),
        ties=int((~keep).sum()),
    )


def languages_of(frame: pd.DataFrame) -> list[str] | None:
    if "language" not in frame.columns:
        return None
    return ["(none)" if pd.isna(v) or str(v).strip() == "" else str(v) for v in frame["language"].tolist()]


def scored_from_probs(table: LabelledTable, probs_path: str | Path, source: str | Path) -> Scored:
    ids = table.frame["id"].tolist()
    probs = read_probs(probs_path, ids, source)
    return Scored(
        ids=ids,
        labels=table.labels,
        forward=probs["forward"],
        swapped=probs["swapped"],
        n_tokens=probs["n_tokens"],
        languages=languages_of(table.frame),
    )


def scored_from_model(table: LabelledTable, source: str | Path, settings, predict=None) -> Scored:
    """Score every row in both orders (``settings`` are JudgeSettings; their TTA mode is forced to
    all). ``predict(rows, settings)`` scores them, ``run_predict`` unless given (a resumable job is)."""
    from dataclasses import replace

    from .data import arena_rows_from_frame
    from .judge import run_predict

    rows = arena_rows_from_frame(table.frame, source, settings.text_normalization)
    result = (predict or run_predict)(rows, replace(settings, tta="all"))
    swapped = np.full_like(result.forward, np.nan)
    swapped[result.rescored] = result.swapped
    return Scored(
        ids=list(result.ids),
        labels=table.labels,
        forward=result.forward,
        swapped=swapped,
        n_tokens=result.row_tokens,
        languages=languages_of(table.frame),
    )


def variants(scored: Scored) -> dict[str, np.ndarray]:
    """P(A wins) per variant: without TTA (forward) and with TTA (mean with the swapped order)."""
    if scored.swapped is None:
        return {"given": scored.forward[:, 0]}
    every = np.arange(len(scored.labels))
    return {
        "no_tta": scored.forward[:, 0],
        "tta": combine_swapped(scored.forward, scored.swapped, every)[:, 0],
    }


def evaluate_scored(scored: Scored, length_edges: Sequence[int], bins: int = 10) -> dict:
    """All metrics as a JSON-ready dict (NaN never appears: absent values are None)."""
    probs = variants(scored)
    labels = scored.labels
    report: dict = {
        "variants": list(probs),
        "metrics": {name: metrics.summary(p, labels, bins) for name, p in probs.items()},
        "calibration_bins": bins,
        "calibration": {name: metrics.calibration_curve(p, labels, bins) for name, p in probs.items()},
        "position_bias": metrics.position_bias(
            scored.forward[:, 0], None if scored.swapped is None else scored.swapped[:, 0], labels
        ),
        "by_language": None,
        "by_length": None,
    }
    if scored.languages is not None:
        report["by_language"] = {
            name: metrics.accuracy_by_group(p, labels, scored.languages) for name, p in probs.items()
        }
    if scored.n_tokens is not None:
        buckets = metrics.length_bucket_labels(scored.n_tokens, length_edges)
        order = metrics.bucket_order(length_edges)
        by_length = {}
        for name, p in probs.items():
            groups = metrics.accuracy_by_group(p, labels, buckets)
            by_length[name] = {bucket: groups[bucket] for bucket in order if bucket in groups}
        report["by_length"] = {"edges": sorted(int(e) for e in length_edges), **by_length}
    return report


def probs_frame(scored: Scored) -> pd.DataFrame:
    """The ``--save-probs`` table: what ``--probs`` reads back."""
    frame = pd.DataFrame({"id": scored.ids, "p_a": scored.forward[:, 0], "p_b": scored.forward[:, 1]})
    if scored.swapped is not None:
        frame["p_a_swapped"] = scored.swapped[:, 0]
        frame["p_b_swapped"] = scored.swapped[:, 1]
    if scored.n_tokens is not None:
        frame["n_tokens"] = scored.n_tokens
    return frame


def write_json(report: dict, path: str | Path) -> Path:
    text = json.dumps(_jsonable(report), indent=2, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- text report


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_report(report: dict) -> str:
    """Plain aligned text: one column per variant."""
    names = report["variants"]
    rows: list[tuple[str, list[str]]] = []

    def section(title: str) -> None:
        rows.append((title, [""] * len(names)))

    m = report["metrics"]
    rows.append(("rows evaluated", [str(m[n]["n"]) for n in names]))
    rows.append(("accuracy", [_num(m[n]["accuracy"]) for n in names]))
    rows.append(("log loss", [_num(m[n]["log_loss"]) for n in names]))
    rows.append(("Brier score", [_num(m[n]["brier"]) for n in names]))
    rows.append((f"ECE ({report['calibration_bins']} bins)", [_num(m[n]["ece"]) for n in names]))
    rows.append(("mean P(A)", [_num(m[n]["mean_p_a"]) for n in names]))
    if report["by_language"]:
        section("accuracy by language")
        first = report["by_language"][names[0]]
        for group, entry in first.items():
            values = [_num(report["by_language"][n][group]["accuracy"]) for n in names]
            rows.append((f"  {group} ({entry['n']})", values))
    if report["by_length"]:
        section("accuracy by prompt length (tokens)")
        for group, entry in report["by_length"][names[0]].items():
            values = [_num(report["by_length"][n][group]["accuracy"]) for n in names]
            rows.append((f"  {group} ({entry['n']})", values))
    bias = report["position_bias"]
    section("position bias")
    single = [""] * (len(names) - 1)
    rows.append(("  labels: A won", [_num(bias["label_a_rate"]), *single]))
    rows.append(("  mean P(A), prompts as given", [_num(bias["mean_p_a_forward"]), *single]))
    rows.append(("  A chosen, prompts as given", [_num(bias["first_slot_rate_forward"]), *single]))
    if bias["swap_agreement"] is not None:
        rows.append(("  mean P(A), swapped prompts", [_num(bias["mean_p_a_swapped"]), *single]))
        rows.append(("  A chosen, both orders", [_num(bias["first_slot_rate"]), *single]))
        rows.append(("  same winner in both orders", [_num(bias["swap_agreement"]), *single]))
    width = max(len(label) for label, _ in rows)
    header = " " * width + "".join(f"{VARIANT_TITLES.get(n, n):>10}" for n in names)
    lines = [header.rstrip()]
    lines += [(label.ljust(width) + "".join(f"{v:>10}" for v in values)).rstrip() for label, values in rows]
    return "\n".join(lines)
