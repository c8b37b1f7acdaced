"""Reading and validating arena tables (parquet, csv, jsonl).

Every problem with an input file becomes one :class:`WsdmError` line that names the file and the
row or column, because a traceback from pandas deep inside a 25k-row job tells the user nothing.
Rows are numbered from 1 in messages (the first data row is row 1).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import WsdmError
from .pairs import PairError, pair_records
from .textnorm import Normalization, normalize_prompt, normalize_response

log = logging.getLogger(__name__)

TEXT_COLUMNS: tuple[str, ...] = ("prompt", "response_a", "response_b")
REQUIRED_COLUMNS: tuple[str, ...] = ("id", *TEXT_COLUMNS)
SUPPORTED_SUFFIXES = (".parquet", ".csv", ".jsonl")


def read_table(path: str | Path) -> pd.DataFrame:
    """Load a table by extension; text columns of CSV stay strings (no number or NA guessing)."""
    path = Path(path)
    if not path.exists():
        raise WsdmError(f"{path}: file not found")
    if path.is_dir():
        raise WsdmError(f"{path}: is a folder, expected a .parquet, .csv or .jsonl file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix == ".csv":
            # Keep every cell as text: ids like 007 and responses like "NA" must survive as written.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        elif suffix == ".jsonl":
            frame = _read_jsonl(path)
        else:
            raise WsdmError(
                f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(SUPPORTED_SUFFIXES)}"
            )
    except WsdmError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow/pandas raise many types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WsdmError(f"{path}: unreadable or truncated {suffix[1:]} file ({reason})") from exc
    return frame


def _read_jsonl(path: Path) -> pd.DataFrame:
    return pd.DataFrame.from_records([record for _, record in jsonl_records(path)])


def jsonl_records(path: Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` of every non-blank line of a JSON Lines file; a line that is not
    a JSON object is an error naming it."""
    records = []
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WsdmError(f"{path}: line {line_number} is not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise WsdmError(f"{path}: line {line_number} is not a JSON object")
            records.append((line_number, record))
    return records


@dataclass(frozen=True)
class ArenaRows:
    """Validated rows: ids in input order and normalised texts, ready for prompting."""

    ids: list
    prompts: list[str]
    responses_a: list[str]
    responses_b: list[str]
    null_text_cells: int

    def __len__(self) -> int:
        return len(self.ids)


def validate_frame(
    frame: pd.DataFrame, source: str | Path, required: tuple[str, ...] = REQUIRED_COLUMNS
) -> None:
    """Raise a one-line error for a missing column, an empty table, or null/duplicate ids.

    Ids are checked only when ``id`` is among the required columns (some tables have no ids).
    """
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise WsdmError(
            f"{source}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(found: {', '.join(map(str, frame.columns)) or 'none'})"
        )
    if len(frame) == 0:
        raise WsdmError(f"{source}: the table has no rows")
    if "id" not in required:
        return
    ids = frame["id"]
    null_positions = ids.isna().to_numpy().nonzero()[0]
    if len(null_positions):
        raise WsdmError(f"{source}: row {null_positions[0] + 1}: id is null")
    duplicated = ids.duplicated(keep=False).to_numpy().nonzero()[0]
    if len(duplicated):
        first = duplicated[0]
        twin = next(int(p) for p in duplicated[1:] if ids.iloc[p] == ids.iloc[first])
        raise WsdmError(f"{source}: duplicate id {ids.iloc[first]!r} at rows {first + 1} and {twin + 1}")


def load_arena_rows(path: str | Path, normalization: Normalization = "reference") -> ArenaRows:
    """Read, validate and normalise a table of ``id, prompt, response_a, response_b`` rows."""
    return arena_rows_from_frame(read_table(path), path, normalization)


def arena_rows_from_frame(
    frame: pd.DataFrame, path: str | Path, normalization: Normalization = "reference"
) -> ArenaRows:
    """Validate and normalise rows already read (``path`` names them in messages)."""
    validate_frame(frame, path)
    null_cells = 0
    columns: dict[str, list[str]] = {}
    for column in TEXT_COLUMNS:
        nulls = frame[column].isna().to_numpy()
        null_cells += int(nulls.sum())
        columns[column] = normalize_column(column, frame[column].tolist(), normalization, nulls)
    if null_cells:
        log.warning("%s: %d null text cell(s) were read as empty strings", path, null_cells)
    return ArenaRows(
        ids=frame["id"].tolist(),
        prompts=columns["prompt"],
        responses_a=columns["response_a"],
        responses_b=columns["response_b"],
        null_text_cells=null_cells,
    )


def arena_rows_from_records(
    records: Sequence[Mapping], normalization: Normalization = "reference"
) -> ArenaRows:
    """Rows from mappings that hold the three texts as strings and optionally an ``id`` (a JSON
    request's pairs; the caller has checked the types), normalised as a table's rows are."""
    return ArenaRows(
        ids=[record.get("id") for record in records],
        **{
            field: normalize_column(column, [record[column] for record in records], normalization)
            for field, column in zip(("prompts", "responses_a", "responses_b"), TEXT_COLUMNS, strict=True)
        },
        null_text_cells=0,
    )


def arena_rows_from_pairs(pairs, normalization: Normalization = "reference") -> ArenaRows:
    """Rows from what a Python caller hands the judge: :class:`ArenaRows` (taken as they are), a
    DataFrame with the arena columns (``id`` optional), or a sequence of pairs (mappings with
    ``prompt``, ``response_a``, ``response_b`` and optionally ``id``, or ``(prompt, a, b)`` tuples).

    Pairs without an id are numbered by position from 0; texts are normalised as a table's are.
    """
    if isinstance(pairs, ArenaRows):
        return pairs
    if isinstance(pairs, pd.DataFrame):
        frame = pairs if "id" in pairs.columns else pairs.assign(id=range(len(pairs)))
        try:
            return arena_rows_from_frame(frame, "pairs (DataFrame)", normalization)
        except WsdmError as exc:  # a ValueError for Python callers, like every other bad pair
            raise PairError(str(exc)) from None
    records = pair_records(pairs)
    if not records:
        raise PairError("pairs: no pairs to judge")
    seen: dict = {}
    for index, record in enumerate(records):
        record.setdefault("id", index)
        try:
            first = seen.setdefault(record["id"], index)
        except TypeError:
            raise PairError(f"pairs[{index}].id: must be hashable (a string or a number)") from None
        if first != index:
            raise PairError(f"pairs: duplicate id {record['id']!r} at pairs[{first}] and pairs[{index}]")
    return arena_rows_from_records(records, normalization)


def normalize_column(
    column: str, values: Sequence, normalization: Normalization, nulls: Sequence[bool] | None = None
) -> list[str]:
    """One text column as the model sees it: the prompt as it is (a list of turns joined), each
    response by ``normalization``; a null cell (``nulls``) becomes an empty string."""
    if nulls is None:
        nulls = [False] * len(values)
    if column == "prompt":
        return ["" if null else normalize_prompt(v) for v, null in zip(values, nulls, strict=True)]
    return [
        "" if null else normalize_response(v, normalization) for v, null in zip(values, nulls, strict=True)
    ]
