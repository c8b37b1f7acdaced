"""Folds that keep the rows of one pair together, and no preset that scores a fold on its training rows.

Every preset is prepared through the real command line on the shipped PandaLM pairs (under the file
names the preset expects), and every fold's dev texts are checked against that fold's training rows.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ASSETS, TINY_TRAIN, TOKENIZER_DIR, run_cli

from wsdm_train.data.folds import assign_folds, stratified_folds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from fold_leaks import fold_leaks  # noqa: E402


def test_rows_of_one_key_follow_the_fold_of_its_first_row():
    labels = np.array([0, 1] * 30)
    keys = [f"row{i}" for i in range(60)]
    keys[41] = keys[7] = keys[3]  # one pair three times
    keys[50] = keys[9]
    keys[12] = None  # a skipped row: a group of its own
    keys[13] = None
    reference = stratified_folds(labels, 3, 11)
    split = assign_folds(labels, 3, 11, keys)
    assert split.folds[7] == split.folds[41] == reference[3] and split.folds[50] == reference[9]
    alone = [i for i in range(60) if i not in (7, 41, 50)]
    np.testing.assert_array_equal(split.folds[alone], reference[alone])
    assert (split.groups, split.rows_in_shared_groups) == (57, 5)
    assert split.moved_rows == int((split.folds != reference).sum())
    ungrouped = assign_folds(labels, 3, 11)
    np.testing.assert_array_equal(ungrouped.folds, reference)
    assert (ungrouped.groups, ungrouped.moved_rows) == (60, 0)


def raw_pair_groups(table: Path) -> list[list[int]]:
    """Row positions of every pair (prompt, both responses in either order) that occurs more than once."""
    frame = pd.read_parquet(table)
    keys = [
        (p, *sorted((a, b))) for p, a, b in zip(frame.prompt, frame.response_a, frame.response_b, strict=True)
    ]
    positions: dict[tuple, list[int]] = {}
    for row, key in enumerate(keys):
        positions.setdefault(key, []).append(row)
    return [rows for rows in positions.values() if len(rows) > 1]


def write_preset_data(preset: str, data: Path) -> None:
    """The tiny preset's PandaLM tables (which share no pair) under the file names `preset` reads."""
    data.mkdir(parents=True)
    names = {
        "tiny": ("pandalm_tiny_train.parquet", "pandalm_tiny_lmsys.csv", "pandalm_tiny_ut.csv"),
        "small": ("train.parquet", None, "ut.parquet"),
        "reference": ("train.parquet", "notie_lmsys.csv", "ut_multi.csv"),
    }[preset]
    shutil.copy(TINY_TRAIN, data / names[0])
    if names[1]:
        shutil.copy(ASSETS / "pandalm_tiny_lmsys.csv", data / names[1])
    ut = pd.read_csv(ASSETS / "pandalm_tiny_ut.csv")
    if names[2].endswith(".parquet"):
        ut.to_parquet(data / names[2], index=False)
    else:
        ut.to_csv(data / names[2], index=False)


@pytest.fixture(scope="module", params=["tiny", "small", "reference"])
def prepared(request, tmp_path_factory) -> tuple[str, Path, str]:
    """`wsdm-train prepare --config PRESET` through the real command line (reference and small:
    the student alone, with the shipped tokenizer standing in for the real model's)."""
    preset = request.param
    root = tmp_path_factory.mktemp(preset)
    write_preset_data(preset, root / "data")
    settings = {"paths.data_dir": root / "data", "paths.processed_dir": root / "processed"}
    if preset != "tiny":
        settings.update({"student.tokenizer": TOKENIZER_DIR, "teachers": "[]"})
    args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    result = run_cli("wsdm-train", "-q", "prepare", "--config", preset, *args, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return preset, root / "processed", result.stderr.strip().splitlines()[-1]


def test_no_preset_scores_a_fold_on_its_training_rows(prepared):
    preset, processed, summary = prepared
    records = fold_leaks(processed)
    assert len(records) == {"tiny": 3 * 2, "small": 2, "reference": 5}[preset]
    assert all(record["dev"] > 90 for record in records)
    assert [r for r in records if r["leaked"]] == []
    assert " pair groups (" in summary


def test_repeated_pairs_share_a_fold_and_every_other_row_keeps_the_reference_split(prepared):
    preset, processed, _ = prepared
    table = TINY_TRAIN
    n_folds = {"tiny": 2, "small": 2, "reference": 5}[preset]
    folds = pd.read_parquet(processed / "folds.parquet")["fold"].to_numpy()
    labels = (pd.read_parquet(table)["winner"] != "model_a").to_numpy().astype(np.int8)
    reference = stratified_folds(labels, n_folds, 2025)
    repeated = raw_pair_groups(table)
    assert repeated, "the shipped tables repeat some pairs"
    for rows in repeated:
        assert (folds[rows] == reference[rows[0]]).all()
    alone = np.setdiff1d(np.arange(len(folds)), [row for rows in repeated for row in rows])
    np.testing.assert_array_equal(folds[alone], reference[alone])
    manifest = pd.read_json(processed / "manifest.json", typ="series")
    described = manifest["folds"]
    assert described["group_by"] == "pair"
    assert described["groups"] == len(folds) - sum(len(rows) - 1 for rows in repeated)
    assert described["rows_in_shared_groups"] == sum(len(rows) for rows in repeated)
    assert described["moved_rows"] == int((folds != reference).sum()) > 0
