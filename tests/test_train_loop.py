"""The training loop on real tiny models: resume after an interruption, and learning a rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_data import rule_examples

from wsdm_serve.tiny import build_tiny_model
from wsdm_train.config import EvalCadence, StageSettings
from wsdm_train.training.modeling import (
    LetterHead,
    LoadSettings,
    LoraSettings,
    LossParts,
    attach_lora,
    load_base_model,
    two_way_ce,
)
from wsdm_train.training.trainer import DistContext, StageRun, run_stage, seed_everything

TOKENIZER_DIR = Path(__file__).parent / "assets" / "qwen2.5-tokenizer"
PAD = 151643


def ce_loss(model, batch) -> LossParts:
    letters, _ = model(batch["input_ids"], batch["attention_mask"])
    value = two_way_ce(letters, batch["labels"])
    return LossParts(value, value.detach())


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("student") / "m",
        TOKENIZER_DIR,
        seed=3,
        hidden_size=64,
        layers=2,
        heads=4,
        kv_heads=2,
        intermediate_size=128,
    )


def make_head(model_dir: Path, lora: LoraSettings, seed: int = 0, gc: bool = True) -> LetterHead:
    seed_everything(seed)
    base = load_base_model(
        model_dir, LoadSettings(dtype="float32", gradient_checkpointing=gc), "cpu", training=True
    )
    return LetterHead(attach_lora(base, lora), (32, 33))


def events(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_interrupted_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(
    student_dir, tokenizer, tmp_path
):
    train = rule_examples(tokenizer, 12, seed=1)
    dev = rule_examples(tokenizer, 6, seed=2)
    lora = LoraSettings(r=4, alpha=8, dropout=0.1)  # dropout: the restored RNG state matters
    settings = StageSettings(
        epochs=2,
        learning_rate=1e-3,
        effective_batch=4,
        per_device_batch=2,
        warmup_steps=1,
        checkpoint_every=1,
        log_every=1,
        eval=EvalCadence(every_steps=2, start_step=0),
    )

    def run(out: Path, loss_fn, resume=True):
        head = make_head(student_dir, lora)
        return run_stage(
            StageRun(
                "t",
                out,
                settings,
                head,
                train,
                dev,
                loss_fn,
                PAD,
                DistContext(),
                resume=resume,
                progress=False,
            )
        )

    straight = run(tmp_path / "straight", ce_loss)
    assert straight.steps == 6 and straight.resumed_from is None

    calls = {"n": 0}

    def crashing(model, batch):
        calls["n"] += 1
        if calls["n"] == 9:  # first micro-batch of optimizer step 5, after step 4 was checkpointed
            raise KeyboardInterrupt
        return ce_loss(model, batch)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "broken", crashing)
    state = json.loads((tmp_path / "broken" / "last" / "trainer_state.json").read_text())["state"]
    assert state["step"] == 4 and not (tmp_path / "broken" / "final").exists()

    resumed = run(tmp_path / "broken", ce_loss)
    assert resumed.resumed_from == 4 and resumed.steps == 6
    log = events(tmp_path / "broken")
    assert [e["step"] for e in log if e["event"] == "resume"] == [4]
    assert [e["step"] for e in log if e["event"] == "train"][-2:] == [5, 6]

    a = load_file(tmp_path / "straight" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "broken" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    for kind in ("best", "final"):
        assert (tmp_path / "broken" / kind / "adapter_config.json").exists()
    # A different plan (here: effective batch) refuses to resume instead of mixing schedules.
    settings.effective_batch = 2
    with pytest.raises(Exception, match="another plan"):
        run(tmp_path / "broken", ce_loss)


def test_student_learns_the_keyword_rule_on_held_out_rows(student_dir, tokenizer, tmp_path):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    train = rule_examples(tokenizer, 320, seed=11)
    dev = rule_examples(tokenizer, 64, seed=12)  # other rows, other filler
    settings = StageSettings(
        epochs=2,
        learning_rate=5e-3,
        effective_batch=16,
        per_device_batch=16,
        warmup_steps=5,
        log_every=4,
        eval=EvalCadence(at_epoch_start=True, at_epoch_end=True),
    )
    head = make_head(student_dir, LoraSettings(r=16, alpha=32, dropout=0.0), gc=False)
    result = run_stage(
        StageRun(
            "rule", tmp_path / "rule", settings, head, train, dev, ce_loss, PAD, DistContext(), progress=False
        )
    )
    evals = [e for e in events(tmp_path / "rule") if e["event"] == "eval"]
    assert evals[0]["acc"] <= 0.65  # the untrained head is at chance
    assert result.best_acc >= 0.8, evals
    assert evals[-1]["log_loss"] < evals[0]["log_loss"]
