"""The tiny chain through the real CLI: pretrain -> finetune -> teacher-predict -> distill."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli as _run_cli
from train_data import write_processed

TEACHERS = ("tiny_small", "tiny_large")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer) -> Path:
    root = tmp_path_factory.mktemp("chain")
    write_processed(root / "processed", tokenizer, TEACHERS, n_train=16, n_lmsys=4, n_pretrain=16, folds=2)
    return root


def settings(root: Path) -> list[str]:
    args = ["--config", "tiny", "--quiet", "--deepspeed", "none"]
    for key, value in {
        "paths.processed_dir": root / "processed",
        "paths.model_dir": root / "models",
        "student.model": root / "base" / "student",
        "teachers.0.model": root / "base" / "tiny_small",
        "teachers.1.model": root / "base" / "tiny_large",
    }.items():
        args += ["--set", f"{key}={value}"]
    return args


def run_cli(*args):
    started = time.time()
    result = _run_cli(*args)
    print(f"{args[1]}: {time.time() - started:.1f}s")
    return result


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_chain_end_to_end(workspace):
    args = settings(workspace)
    models = workspace / "models"

    # Distilling before the teachers have predicted is one clear line, exit code 2.
    early = run_cli("wsdm-train", "distill", *args, "--set", "distill.init_from_pretrain=false")
    assert early.returncode == 2, early.stderr
    assert early.stderr.strip().splitlines()[-1].startswith("error: ") and "teacher-predict" in early.stderr

    done = run_cli("wsdm-train", "pretrain", *args)
    assert done.returncode == 0, done.stderr
    for sub in ("student/pretrain", "teachers/tiny_small/pretrain", "teachers/tiny_large/pretrain"):
        for kind in ("best", "final"):
            assert (models / sub / kind / "adapter_model.safetensors").exists(), sub
        assert (models / sub / "last" / "trainer_state.json").exists()
    student_log = events(models / "student" / "pretrain" / "metrics.jsonl")
    assert student_log[0]["event"] == "start" and student_log[-1]["event"] == "end"
    assert student_log[0]["plan"]["items_per_micro"] == 2  # 4 sequences = 2 rows x both orders

    # Fold 1 runs the same code; one fold keeps the test quick on two cores.
    done = run_cli("wsdm-train", "finetune", *args, "--fold", "0")
    assert done.returncode == 0, done.stderr
    start = events(models / "teachers" / "tiny_large" / "fold0" / "metrics.jsonl")[0]
    assert start["init"].endswith("teachers/tiny_large/pretrain/final")

    # Scoring has no DeepSpeed engine: teacher-predict takes no --deepspeed.
    scoring = [arg for arg in args if arg not in ("--deepspeed", "none")]
    done = run_cli("wsdm-train", "teacher-predict", *scoring, "--fold", "0")
    assert done.returncode == 0, done.stderr
    for name in TEACHERS:
        for fold in (0,):
            predictions = pd.read_parquet(models / "teachers" / name / f"fold{fold}" / "predictions.parquet")
            train = pd.read_parquet(
                workspace / "processed" / "teachers" / name / f"fold{fold}" / "train.parquet"
            )
            dev = pd.read_parquet(workspace / "processed" / "teachers" / name / f"fold{fold}" / "dev.parquet")
            assert list(predictions.columns) == ["row_key", "logit_a", "logit_b", "out_of_fold"]
            assert len(predictions) == len(train) + len(dev)
            assert set(predictions.loc[predictions.out_of_fold, "row_key"]) == set(dev.row_key)
            assert (
                predictions.logit_a.dtype == "float32"
                and predictions[["logit_a", "logit_b"]].notna().all().all()
            )
    # Teachers of different sizes give different logits for the same row.
    a = pd.read_parquet(models / "teachers" / "tiny_small" / "fold0" / "predictions.parquet").set_index(
        "row_key"
    )
    b = pd.read_parquet(models / "teachers" / "tiny_large" / "fold0" / "predictions.parquet").set_index(
        "row_key"
    )
    assert (a.logit_a - b.reindex(a.index).logit_a).abs().max() > 1e-4

    done = run_cli("wsdm-train", "distill", *args, "--fold", "0")
    assert done.returncode == 0, done.stderr
    assert not (models / "student" / "fold1").exists()
    for fold in (0,):
        out = models / "student" / f"fold{fold}"
        config = json.loads((out / "best" / "adapter_config.json").read_text())
        assert config["r"] == 8 and config["lora_alpha"] == 16
        log = events(out / "metrics.jsonl")
        assert log[0]["teachers"] == list(TEACHERS) and log[0]["dropped_rows"] == 0
        train_events = [e for e in log if e["event"] == "train"]
        assert train_events and all("kl" in e and "cos" in e for e in train_events)
        evals = [e for e in log if e["event"] == "eval"]
        assert evals[0]["reason"] == "epoch_start" and evals[-1]["reason"] == "epoch_end"
        assert all(0 <= e["acc"] <= 1 and e["log_loss"] > 0 for e in evals)

    # Re-running a finished stage skips it instead of retraining.
    again = run_cli("wsdm-train", "distill", *args, "--fold", "0")
    assert again.returncode == 0 and "skipping" in again.stderr
