"""The three training inputs, read into labelled rows with the reference's text treatment.

- competition train (WSDM layout: ``winner`` is ``model_a`` or ``model_b``): prompt raw, responses
  through the reference list-or-text normalisation;
- LMSYS extra rows (``winner_model_a``/``winner_model_b`` flags, text fields are list literals):
  prompt and responses parsed; ties are skipped (the reference's file had none left, and mapping
  them to B, as its code would, teaches a wrong label);
- ut post-pretraining rows (same flags, plain strings): texts used as they are.

Labels: 0 = A wins, 1 = B wins. A row whose text cannot be used (a null cell, or a string that is
not valid Unicode, which no tokenizer accepts) is skipped with a reason instead of crashing the run
or being trained on as the text "nan", as the reference did. A label that is neither A nor B is an
error: it means the file is not what the configuration says it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wsdm_serve.data import read_table, validate_frame
from wsdm_serve.errors import WsdmError
from wsdm_serve.textnorm import normalize_prompt, normalize_response

TEXT_COLUMNS = ("prompt", "response_a", "response_b")


@dataclass(frozen=True)
class Skip:
    """A row left out of some outputs; ``row`` counts data rows from 1, ``scope`` names the outputs."""

    source: str
    row: int
    id: str
    reason: str
    scope: str = "all"


@dataclass
class SourceRows:
    """Usable rows of one input, in file order."""

    source: str
    path: Path
    n_read: int
    keys: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    responses_a: list[str] = field(default_factory=list)
    responses_b: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def label_array(self) -> np.ndarray:
        return np.asarray(self.labels, dtype=np.int8)


@dataclass
class CompetitionRows(SourceRows):
    """Competition rows, plus the id and label of every row of the file (folds are defined on all)."""

    all_ids: list[str] = field(default_factory=list)
    all_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    positions: list[int] = field(default_factory=list)


def _is_null(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _id_text(value: object) -> str:
    """Ids as text, so 12 and "12" name the same row and float ids read from CSV stay exact."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _unicode_problem(texts: tuple[str, str, str]) -> str | None:
    for column, text in zip(TEXT_COLUMNS, texts, strict=True):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return f"{column} is not valid Unicode (unpaired surrogate); it cannot be tokenized"
    return None


def _flag(value: object, path: Path, row: int, column: str) -> int:
    """A 0/1 winner flag as written by pandas or a CSV (1, 1.0, "1", "1.0", True)."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if not _is_null(value):
        try:
            number = float(str(value).strip())
        except ValueError:
            number = math.nan
        if number in (0.0, 1.0):
            return int(number)
    raise WsdmError(f"{path}: row {row}: {column} is {value!r}, expected 0 or 1")


def _frame(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    frame = read_table(path)
    validate_frame(frame, path, required)
    return frame.reset_index(drop=True)


def _add_row(rows: SourceRows, key: str, id_: str, row: int, label: int, texts: tuple) -> bool:
    """Append a usable row, or record why it is skipped; returns whether it was kept."""
    for column, value in zip(TEXT_COLUMNS, texts, strict=True):
        if value is None:
            rows.skipped.append(Skip(rows.source, row, id_, f"{column} is null"))
            return False
    problem = _unicode_problem(texts)
    if problem:
        rows.skipped.append(Skip(rows.source, row, id_, problem))
        return False
    rows.keys.append(key)
    rows.ids.append(id_)
    rows.rows.append(row)
    rows.labels.append(label)
    rows.prompts.append(texts[0])
    rows.responses_a.append(texts[1])
    rows.responses_b.append(texts[2])
    return True


def read_competition(path: str | Path) -> CompetitionRows:
    """``winner == "model_a"`` is A, ``"model_b"`` is B; anything else stops the run with the row named."""
    path = Path(path)
    frame = _frame(path, ("id", *TEXT_COLUMNS, "winner"))
    winners = frame["winner"].tolist()
    labels = np.zeros(len(frame), dtype=np.int8)
    for i, winner in enumerate(winners):
        if winner == "model_b":
            labels[i] = 1
        elif winner != "model_a":
            raise WsdmError(f"{path}: row {i + 1}: winner is {winner!r}, expected 'model_a' or 'model_b'")
    ids = [_id_text(v) for v in frame["id"].tolist()]
    rows = CompetitionRows(source="train", path=path, n_read=len(frame), all_ids=ids, all_labels=labels)
    prompts, answers_a, answers_b = (frame[c].tolist() for c in TEXT_COLUMNS)
    for i in range(len(frame)):
        texts = (
            None if _is_null(prompts[i]) else normalize_prompt(prompts[i]),
            None if _is_null(answers_a[i]) else normalize_response(answers_a[i], "reference"),
            None if _is_null(answers_b[i]) else normalize_response(answers_b[i], "reference"),
        )
        if _add_row(rows, f"train:{ids[i]}", ids[i], i + 1, int(labels[i]), texts):
            rows.positions.append(i)
    return rows


def _pair_label(flags: dict[str, int], path: Path, row: int) -> int | None:
    """0 for A, 1 for B, None for a tie; a row that names both winners is an error."""
    a, b, tie = flags["winner_model_a"], flags.get("winner_model_b"), flags.get("winner_tie", 0)
    if a == 1 and (b == 1 or tie == 1):
        raise WsdmError(f"{path}: row {row}: more than one of winner_model_a/winner_model_b/winner_tie is 1")
    if a == 1:
        return 0
    if b is None:  # no winner_model_b column: the reference's rule, "not A" is B
        return None if tie == 1 else 1
    if b == 1 and tie == 1:
        raise WsdmError(f"{path}: row {row}: both winner_model_b and winner_tie are 1")
    return 1 if b == 1 else None


def _read_pairs(path: Path, source: str, required: tuple[str, ...], parse: bool) -> SourceRows:
    frame = _frame(path, required)
    flag_columns = [c for c in ("winner_model_a", "winner_model_b", "winner_tie") if c in frame.columns]
    flag_values = {c: frame[c].tolist() for c in flag_columns}
    rows = SourceRows(source=source, path=path, n_read=len(frame))
    with_ids = "id" in required
    ids = [_id_text(v) for v in frame["id"].tolist()] if with_ids else [str(i) for i in range(len(frame))]
    mode = "reference" if parse else "none"
    columns = [frame[c].tolist() for c in TEXT_COLUMNS]
    for i in range(len(frame)):
        row = i + 1
        flags = {c: _flag(flag_values[c][i], path, row, c) for c in flag_columns}
        label = _pair_label(flags, path, row)
        if label is None:
            rows.skipped.append(Skip(source, row, ids[i], "tie"))
            continue
        texts = tuple(None if _is_null(col[i]) else normalize_response(col[i], mode) for col in columns)
        _add_row(rows, f"{source}:{ids[i]}", ids[i], row, label, texts)
    return rows


def read_lmsys(path: str | Path) -> SourceRows:
    """LMSYS layout: prompt and responses are list literals (multi-turn), parsed like the reference."""
    path = Path(path)
    return _read_pairs(path, "lmsys", ("id", *TEXT_COLUMNS, "winner_model_a", "winner_model_b"), parse=True)


def read_ut(path: str | Path) -> SourceRows:
    """ut layout: plain strings used as they are; rows are keyed by their 0-based position, as the
    reference's ``id`` column was (the file's own ``id`` column, if any, is not used)."""
    path = Path(path)
    return _read_pairs(path, "ut", (*TEXT_COLUMNS, "winner_model_a"), parse=False)
