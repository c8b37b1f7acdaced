"""`wsdm-train prepare` as a job: re-runs, changed inputs, bad inputs, skipped rows, interruption.

Uses slices of the real PandaLM tables so that each run takes a second or two.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import ASSETS, PANDALM_LMSYS, PANDALM_TRAIN, run_cli

from wsdm_serve.errors import WsdmError
from wsdm_serve.prompt import JudgePrompt
from wsdm_serve.truncation import TruncationConfig
from wsdm_train.config import load_config
from wsdm_train.data.encode import encode_rows
from wsdm_train.data.prepare import run_prepare

PANDALM_UT = ASSETS / "pandalm_ut_format.csv"


@pytest.fixture
def data(tmp_path):
    """A data folder with the first rows of each real table, under the reference file names."""
    folder = tmp_path / "data"
    folder.mkdir()
    pd.read_parquet(PANDALM_TRAIN).head(80).to_parquet(folder / "train.parquet", index=False)
    lmsys = pd.read_csv(PANDALM_LMSYS, dtype=str, keep_default_na=False)
    lmsys.head(100).to_csv(folder / "notie_lmsys.csv", index=False)
    pd.read_csv(PANDALM_UT).head(30).to_csv(folder / "ut_multi.csv", index=False)
    return folder


def settings(data, *extra: str) -> list[str]:
    """The tiny preset reading `data` with the reference file names, student only unless told."""
    return [
        f"paths.data_dir={data}",
        f"paths.processed_dir={data / 'processed'}",
        "prepare.train_file=train.parquet",
        "prepare.lmsys_file=notie_lmsys.csv",
        "prepare.ut_file=ut_multi.csv",
        "teachers=[]",
        "prepare.n_folds=5",
        *extra,
    ]


def prepare(data, *extra: str, **kwargs):
    return run_prepare(load_config("tiny", settings(data, *extra)), progress=False, **kwargs)


def mtimes(folder) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()
    }


def set_args(data, *extra: str) -> list[str]:
    return [arg for item in settings(data, *extra) for arg in ("--set", item)]


def test_cli_rerun_with_same_inputs_does_nothing(data):
    """The first run is in-process (the CLI only wraps it); the re-run goes through the command."""
    first = prepare(data)
    assert first.summary.startswith("prepare: 80 train rows in 5 folds, ")
    before = mtimes(data / "processed")
    assert "manifest.json" in before and "student/fold0/train.parquet" in before

    again = run_cli("wsdm-train", "prepare", "--config", "tiny", *set_args(data))
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip() == f"prepare: up to date ({data / 'processed'})"
    assert mtimes(data / "processed") == before


def test_changed_input_and_missing_output_are_detected(data):
    first = prepare(data)
    ut = pd.read_csv(data / "ut_multi.csv")
    ut.loc[3, "response_a"] = "A different answer."
    ut.to_csv(data / "ut_multi.csv", index=False)
    second = prepare(data)
    assert not second.up_to_date
    assert second.manifest["inputs"]["ut"]["sha256"] != first.manifest["inputs"]["ut"]["sha256"]
    pretrain = pq.read_table(data / "processed/student/pretrain.parquet").to_pandas()
    assert "A different answer." in pretrain.loc[pretrain["row_key"] == "ut:3", "text"].item()
    assert prepare(data).up_to_date
    # A deleted output is rebuilt; --force rebuilds regardless.
    (data / "processed/student/fold3/dev.parquet").unlink()
    assert not prepare(data).up_to_date
    assert (data / "processed/student/fold3/dev.parquet").is_file()
    assert not prepare(data, force=True).up_to_date


def test_settings_that_change_the_data_rerun_and_others_do_not(data, tmp_path):
    assert not prepare(data).up_to_date
    assert not prepare(data, "prepare.student_dev.token_budget=500").up_to_date
    # An identical copy of the inputs elsewhere, and sections prepare does not read, change nothing.
    copy = tmp_path / "copy"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("processed"))
    same = run_prepare(
        load_config(
            "tiny",
            [
                *settings(copy, "prepare.student_dev.token_budget=500"),
                f"paths.processed_dir={data / 'processed'}",
            ],
        ),
        progress=False,
    )
    assert same.up_to_date
    assert prepare(data, "prepare.student_dev.token_budget=500", "paths.model_dir=elsewhere").up_to_date


def test_missing_train_file_is_one_line_and_exit_2(data):
    (data / "train.parquet").unlink()
    result = run_cli("wsdm-train", "prepare", "--config", "tiny", *set_args(data))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {data / 'train.parquet'}: file not found (the competition train table, prepare.train_file)"
    ]
    assert not (data / "processed").exists()


def test_malformed_table_is_one_line_and_exit_2(data):
    pd.read_parquet(data / "train.parquet").drop(columns=["winner"]).to_parquet(data / "train.parquet")
    result = run_cli("wsdm-train", "prepare", "--config", "tiny", *set_args(data))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {data / 'train.parquet'}: missing column winner")


def test_bad_config_is_one_line_and_exit_2(data):
    result = run_cli("wsdm-train", "prepare", "--config", "tiny", "--set", "prepare.n_folds=many")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "error: --set prepare.n_folds=many: prepare.n_folds: expected an integer, got 'many'"
    )


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda d: (d / "train.parquet").write_bytes(b"PAR1 not really"), "unreadable or truncated parquet"),
        (
            lambda d: (
                pd.read_parquet(d / "train.parquet")
                .assign(winner=lambda f: f["winner"].where(f.index != 7, "tie"))
                .to_parquet(d / "train.parquet")
            ),
            "row 8: winner is 'tie', expected 'model_a' or 'model_b'",
        ),
        (
            lambda d: (
                pd.read_csv(d / "notie_lmsys.csv", dtype=str, keep_default_na=False)
                .assign(winner_model_a=lambda f: f["winner_model_a"].where(f.index != 4, "yes"))
                .to_csv(d / "notie_lmsys.csv", index=False)
            ),
            "notie_lmsys.csv: row 5: winner_model_a is 'yes', expected 0 or 1",
        ),
        (
            lambda d: (
                pd.read_csv(d / "ut_multi.csv").drop(columns=["winner_model_a"]).to_csv(d / "ut_multi.csv")
            ),
            "ut_multi.csv: missing column winner_model_a",
        ),
        (
            lambda d: ((d / "train.parquet").unlink(), (d / "train.parquet").mkdir()),
            "train.parquet: is a folder",
        ),
    ],
)
def test_malformed_inputs_raise_one_clear_error(data, break_it, message):
    break_it(data)
    with pytest.raises(WsdmError, match=message):
        prepare(data)
    assert not (data / "processed").exists()


def test_missing_tokenizer_folder(data):
    with pytest.raises(WsdmError, match=r"tokenizer folder not found \(student.tokenizer"):
        prepare(data, f"student.tokenizer={data / 'nowhere'}")


def test_unusable_rows_are_skipped_and_counted(data):
    train = pd.read_parquet(data / "train.parquet")
    train.loc[5, "prompt"] = None
    train.to_parquet(data / "train.parquet", index=False)
    lmsys = pd.read_csv(data / "notie_lmsys.csv", dtype=str, keep_default_na=False)
    lmsys.loc[2, "response_b"] = '["broken \\ud800 text"]'  # a JSON-escaped lone surrogate
    lmsys.to_csv(data / "notie_lmsys.csv", index=False)

    result = prepare(data)
    skipped = {(s["source"], s["row"]): s for s in result.manifest["skipped"]["rows"]}
    assert skipped[("train", 6)]["reason"] == "prompt is null"
    assert skipped[("train", 6)]["id"] == str(train.loc[5, "id"])
    assert skipped[("lmsys", 3)]["reason"].startswith("response_b is not valid Unicode")
    counts = result.manifest["skipped"]["counts"]
    assert counts["train: prompt is null"] == 1
    assert counts["lmsys: tie"] == int((lmsys["winner_tie"] == "1").sum())

    out = data / "processed"
    folds = pq.read_table(out / "folds.parquet").to_pandas()
    assert len(folds) == 80, "folds are defined on every competition row"
    keys = set()
    for k in range(5):
        keys |= set(pq.read_table(out / f"student/fold{k}/dev.parquet").column("row_key").to_pylist())
    assert f"train:{train.loc[5, 'id']}" not in keys and len(keys) == 79
    train_keys = pq.read_table(out / "student/fold0/train.parquet").column("row_key").to_pylist()
    assert f"lmsys:{lmsys.loc[2, 'id']}" not in train_keys
    assert result.manifest["inputs"]["train"]["rows_used"] == 79


def test_encoding_isolates_a_row_the_tokenizer_rejects(tokenizer):
    prompts = ["one", "two \ud800", "three"]
    encoded = encode_rows(
        tokenizer,
        JudgePrompt(tokenizer),
        prompts,
        ["a"] * 3,
        ["b"] * 3,
        TruncationConfig(100, 50),
        progress=False,
    )
    assert encoded.kept.tolist() == [0, 2]
    assert [i for i, _ in encoded.failures] == [1]
    assert encoded.failures[0][1].startswith("cannot be tokenized (")
    assert encoded.columns["text"].length() == 2 and encoded.columns["n_tokens"].length() == 2


def test_missing_extras_are_noted_and_left_out(data):
    (data / "notie_lmsys.csv").unlink()
    (data / "ut_multi.csv").unlink()
    notes = []
    result = prepare(data, echo=notes.append)
    assert any("notie_lmsys.csv not found" in n for n in result.notes)
    assert any(str(data / "ut_multi.csv") in n for n in notes)
    out = data / "processed"
    assert not (out / "student/pretrain.parquet").exists()
    sources = set(pq.read_table(out / "student/fold0/train.parquet").column("source").to_pylist())
    assert sources == {"train"}
    assert result.manifest["inputs"]["lmsys"] == {"present": False, "path": str(data / "notie_lmsys.csv")}


def test_extras_can_be_switched_off(data):
    result = prepare(data, "prepare.lmsys_file=null", "prepare.ut_file=null")
    assert result.notes == []
    assert result.manifest["inputs"]["ut"] == {"present": False, "path": None}


def test_interrupted_run_resumes_and_never_looks_complete(data):
    """A run stopped after the student unit leaves no processed folder; the next run keeps that unit."""
    extra = ("teachers=[{name: t1, model: m, tokenizer: tests/assets/qwen2.5-tokenizer}]",)

    def stop_after_student(message: str) -> None:
        if message.startswith("prepare: student:"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_prepare(load_config("tiny", settings(data, *extra)), progress=True, echo=stop_after_student)
    out = data / "processed"
    stage = data / ".processed.partial"
    assert not out.exists()
    assert (stage / "student/fold0/train.parquet").is_file()
    assert not (stage / "manifest.json").exists()
    student_before = mtimes(stage / "student")

    messages = []
    result = run_prepare(load_config("tiny", settings(data, *extra)), progress=True, echo=messages.append)
    assert not result.up_to_date
    assert not any(m.startswith("prepare: student:") for m in messages), "the student unit was not redone"
    assert any(m.startswith("prepare: teachers/t1:") for m in messages)
    assert mtimes(out / "student") == student_before
    assert not stage.exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert {item["path"] for item in manifest["outputs"]} >= {
        "student/pretrain.parquet",
        "teachers/t1/pretrain.parquet",
    }


def test_a_folder_prepare_did_not_write_is_never_replaced(data):
    foreign = data / "processed"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(WsdmError, match="was not written by `wsdm-train prepare`"):
        prepare(data)
    assert (foreign / "notes.txt").read_text() == "mine"
