"""Training stops at the first non-finite number, for real, and says where.

A tiny teacher in float16 with a learning rate of 1e6: the first optimizer step blows the LoRA
weights up, so the next forward pass overflows float16 and the loss is NaN. The stage must stop
there (exit code 2, one line naming stage, step and rows), keep the last good checkpoint and choose
no best checkpoint from NaN dev logits; teacher-predict must refuse to write NaN logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file, save_file
from train_data import write_processed

from wsdm_train.training.guards import name_rows

TEACHER = (
    "teachers=[{name: tiny_small, tokenizer: tests/assets/qwen2.5-tokenizer, load_in_4bit: false, "
    "dtype: float16, build_tiny: {hidden_size: 32, layers: 1, heads: 2, kv_heads: 1, "
    "intermediate_size: 64, seed: 12}, sdpa_cudnn: false}]"
)
ROOT = Path(__file__).resolve().parent.parent
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# A constant schedule and no evaluation after the start: step 2's loss is the first number to go bad.
BLOW_UP = [
    "pretrain.teacher.learning_rate=1e6",
    "pretrain.teacher.scheduler=constant",
    "pretrain.teacher.epochs=3",
    "pretrain.teacher.checkpoint_every=1",
    "pretrain.teacher.eval.every_steps=0",
    "pretrain.teacher.eval.at_epoch_end=false",
]


@pytest.fixture(scope="module")
def processed(tmp_path_factory, tokenizer) -> Path:
    root = tmp_path_factory.mktemp("guards")
    write_processed(root / "processed", tokenizer, ("tiny_small",), n_train=16, n_lmsys=4, n_pretrain=16)
    return root / "processed"


def train_cli(command: str, processed: Path, models: Path, *settings: str, extra: tuple[str, ...] = ()):
    args = ["--config", "tiny", "--quiet", *extra]
    if command != "teacher-predict":  # the one training command without a DeepSpeed option
        args += ["--deepspeed", "none"]
    for item in (f"paths.processed_dir={processed}", f"paths.model_dir={models}", TEACHER, *settings):
        args += ["--set", item]
    return run_cli("wsdm-train", command, *args, cwd=ROOT, env=ONE_THREAD)


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_nan_loss_stops_the_stage_and_keeps_the_last_good_checkpoint(processed, tmp_path):
    models = tmp_path / "models"
    result = train_cli("pretrain", processed, models, *BLOW_UP, extra=("--target", "tiny_small"))
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    run_dir = models / "teachers" / "tiny_small" / "pretrain"
    assert line.startswith(
        "error: pretrain-tiny_small: the loss is nan at optimizer step 2 (epoch 1) on 4 rows"
    )
    assert f"the last good checkpoint is {run_dir / 'last'} (step 1)" in line
    assert result.stderr.strip().splitlines() == [line], "--quiet: the error line and nothing else"

    record = [e for e in events(run_dir) if e["event"] == "nonfinite"]
    assert len(record) == 1 and record[0]["step"] == 2 and len(record[0]["rows"]) == 4
    assert name_rows(record[0]["rows"]) in line, "the line names every row of the batch"
    assert not any(e["event"] == "end" for e in events(run_dir))

    # What is on disk is the last good state: step 1's weights, finite; no final adapter.
    state = json.loads((run_dir / "last" / "trainer_state.json").read_text())
    assert state["state"]["step"] == 1
    saved = torch.load(run_dir / "last" / "state.pt", weights_only=False)["trainable"]
    assert saved and all(torch.isfinite(t).all() for t in saved.values())
    assert not (run_dir / "final").exists()
    best = json.loads((run_dir / "best" / "wsdm_checkpoint.json").read_text())
    assert best["step"] == 0 and best["dev"]["acc"] == best["dev"]["acc"]  # chosen before, not NaN


def test_nan_dev_logits_choose_no_checkpoint(processed, tmp_path):
    """With an evaluation after the blow-up step, the dev logits are NaN first: no best from them."""
    models = tmp_path / "models"
    settings = [*BLOW_UP[:-2], "pretrain.teacher.eval.every_steps=1", "pretrain.teacher.eval.start_step=0"]
    result = train_cli("pretrain", processed, models, *settings, extra=("--target", "tiny_small"))
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: pretrain-tiny_small dev set at step ")
    assert "logit is not a finite number" in line and line.endswith("no checkpoint is chosen from it")
    run_dir = models / "teachers" / "tiny_small" / "pretrain"
    best = json.loads((run_dir / "best" / "wsdm_checkpoint.json").read_text())
    evaluations = [e for e in events(run_dir) if e["event"] == "eval"]
    assert all(e["acc"] == e["acc"] and e["log_loss"] == e["log_loss"] for e in evaluations)
    assert best["step"] == max(e["step"] for e in evaluations if e["best"])


def test_teacher_predict_refuses_nan_logits(processed, tmp_path):
    """A fold adapter whose weights are NaN: teacher-predict names the row and writes nothing."""
    models = tmp_path / "models"
    trained = train_cli(
        "finetune",
        processed,
        models,
        "finetune.init_from_pretrain=false",
        "finetune.max_steps=1",
        extra=("--teacher", "tiny_small", "--fold", "0"),
    )
    assert trained.returncode == 0, trained.stderr
    best = models / "teachers" / "tiny_small" / "fold0" / "best"
    weights = best / "adapter_model.safetensors"
    poisoned = {name: torch.full_like(t, float("nan")) for name, t in load_file(str(weights)).items()}
    save_file(poisoned, str(weights))

    result = train_cli(
        "teacher-predict",
        processed,
        models,
        "finetune.init_from_pretrain=false",
        extra=("--teacher", "tiny_small", "--fold", "0"),
    )
    assert result.returncode == 2, result.stderr
    out = models / "teachers" / "tiny_small" / "fold0" / "predictions.parquet"
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {out} (train rows of fold 0): row 1 (")
    assert "logit is not a finite number" in line and line.endswith("nothing was written")
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(out.name)], "no partial file"


def test_row_lists_stay_one_readable_line():
    keys = [f"train:{i}" for i in range(40)]
    assert name_rows(keys[:3]) == "train:0, train:1, train:2"
    assert name_rows(keys).endswith("train:15, ... (+24 more)")


def test_training_runs_without_the_cudnn_attention_backend(processed, tmp_path):
    """The root cause of the NaN gradients on Hopper: training must not use cuDNN attention."""
    from wsdm_train.config import load_config
    from wsdm_train.training.distributed import DistContext
    from wsdm_train.training.guards import cudnn_attention_enabled
    from wsdm_train.training.stages import load_for_training

    settings = [f"paths.processed_dir={processed}", f"paths.model_dir={tmp_path / 'models'}", TEACHER]
    config = load_config("tiny", [*settings, "teachers.0.dtype=float32"])
    ctx = DistContext(device="cpu")
    before = cudnn_attention_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        load_for_training(config.teacher("tiny_small"), config, ctx, None, 0)
        assert not cudnn_attention_enabled()
        allowed = load_config("tiny", [*settings, "teachers.0.dtype=float32", "teachers.0.sdpa_cudnn=true"])
        load_for_training(allowed.teacher("tiny_small"), allowed, ctx, None, 0)
        assert cudnn_attention_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
