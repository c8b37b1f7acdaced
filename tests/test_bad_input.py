"""Every bad input ends with exit code 2 and one line that names the file, row or column."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ARENA_SAMPLE, run_cli

GOOD = pd.read_parquet(ARENA_SAMPLE).head(4)


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict(orient="records")))
    return path


def truncated_parquet(tmp_path: Path) -> Path:
    path = write(GOOD, tmp_path / "t.parquet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


CASES = {
    "missing column": (
        lambda p: write(GOOD.drop(columns="response_b"), p / "t.parquet"),
        "missing column response_b",
    ),
    "empty table": (lambda p: write(GOOD.head(0), p / "t.parquet"), "the table has no rows"),
    "duplicate id": (
        lambda p: write(GOOD.assign(id=[1, 2, 3, 2]), p / "t.csv"),
        "duplicate id '2' at rows 2 and 4",
    ),
    "null id": (lambda p: write(GOOD.assign(id=[1.0, None, 3.0, 4.0]), p / "t.parquet"), "row 2: id is null"),
    "truncated parquet": (truncated_parquet, "unreadable or truncated parquet file"),
    "bad jsonl line": (
        lambda p: (p / "t.jsonl").write_text('{"id": 1}\n{"id": 2, oops}\n') and p / "t.jsonl",
        "line 2 is not valid JSON",
    ),
    "missing file": (lambda p: p / "absent.parquet", "file not found"),
    "unsupported type": (
        lambda p: write(GOOD, p / "t.csv").rename(p / "t.xlsx"),
        "unsupported file type .xlsx",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["predict", "render"])
def test_bad_input_is_one_clear_line(tmp_path, tiny_model_dir, case, command):
    make, message = CASES[case]
    path = make(tmp_path)
    out = tmp_path / ("out.csv" if command == "predict" else "r.parquet")
    result = run_cli("wsdm-serve", command, path, "--model", tiny_model_dir, "--out", out)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: "), result.stderr
    assert str(path) in lines[0] and message in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_model_folder_is_one_line(tmp_path):
    result = run_cli(
        "wsdm-serve", "predict", ARENA_SAMPLE, "--model", tmp_path / "nope", "--out", tmp_path / "s.csv"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "download-final-model" in result.stderr and "Traceback" not in result.stderr


def test_input_file_is_never_modified(tmp_path, tiny_model_dir):
    path = write(GOOD, tmp_path / "t.parquet")
    before = path.read_bytes()
    result = run_cli(
        "wsdm-serve", "-q", "render", path, "--model", tiny_model_dir, "--out", tmp_path / "r.csv"
    )
    assert result.returncode == 0, result.stderr
    assert path.read_bytes() == before
