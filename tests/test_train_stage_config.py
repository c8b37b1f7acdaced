"""Presets, overrides and the step arithmetic that keeps the recipe independent of the GPU count."""

from __future__ import annotations

import json
import math

import pytest

from wsdm_serve.errors import WsdmError
from wsdm_train.config import load_config
from wsdm_train.training.trainer import (
    BatchPlan,
    deepspeed_config,
    epoch_micro_batches,
    resolve_deepspeed_config,
)


def test_reference_preset_holds_the_published_hyperparameters():
    config = load_config("reference")
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (64, 128, 0.05)
    assert len(config.lora.target_modules) == 7
    student = config.pretrain.student
    assert (student.loss, student.both_orders, student.learning_rate, student.epochs) == (
        "letter_lm",
        True,
        5e-5,
        1,
    )
    assert (student.effective_batch, student.warmup_steps) == (128, 100)
    teacher = config.pretrain.teacher
    assert (teacher.loss, teacher.learning_rate, teacher.effective_batch, teacher.warmup_steps) == (
        "two_way",
        1e-5,
        128,
        100,
    )
    ft = config.finetune
    assert (ft.learning_rate, ft.epochs, ft.effective_batch, ft.warmup_ratio) == (1e-5, 2, 128, 0.015)
    d = config.distill
    assert (d.learning_rate, d.epochs, d.effective_batch, d.per_device_batch) == (5e-5, 2, 64, 1)
    assert (d.temperature, d.mode, d.eval.every_steps, d.eval.start_fraction) == (1.0, "reference", 50, 0.67)
    for stage in (student, teacher, ft, d):
        assert stage.betas == (0.9, 0.95) and stage.weight_decay == 0 and stage.max_grad_norm == 1.0
        assert stage.seed == 1234 and stage.scheduler == "cosine"
    assert [t.load_in_4bit for t in config.teachers] == [True, True, True]
    assert not config.student.load_in_4bit and config.student.gradient_checkpointing


def test_tiny_preset_has_teachers_and_student_of_different_sizes():
    config = load_config("tiny")
    sizes = {config.student.build_tiny.hidden_size, *(t.build_tiny.hidden_size for t in config.teachers)}
    assert len(sizes) == 1 + len(config.teachers)


@pytest.mark.parametrize(("world", "grad_accum"), [(1, 64), (2, 32), (8, 8), (64, 1)])
def test_gradient_accumulation_keeps_the_effective_batch(world, grad_accum):
    settings = load_config("reference").distill
    plan = BatchPlan.build(settings, n_items=100_000, group=1, world_size=world)
    assert plan.grad_accum == grad_accum
    assert plan.grad_accum * settings.per_device_batch * world == 64
    # Same optimizer steps on any GPU count (up to the per-rank rounding of 100k rows).
    assert abs(plan.steps_per_epoch - math.ceil(100_000 / 64)) <= 1
    assert plan.warmup_steps == math.ceil(0.015 * plan.total_steps)
    assert plan.eval_start_step == math.ceil(0.67 * plan.steps_per_epoch)


def test_pretrain_pairs_count_as_two_sequences():
    settings = load_config("reference").pretrain.student
    plan = BatchPlan.build(settings, n_items=10_000, group=2, world_size=8)
    assert (plan.items_per_micro, plan.grad_accum) == (1, 8)  # 1 pair x GA 8 x 8 GPUs = 64 pairs
    assert plan.warmup_steps == 100


def test_an_effective_batch_the_gpus_cannot_split_is_refused():
    settings = load_config("reference").distill
    with pytest.raises(WsdmError, match="not a multiple"):
        BatchPlan.build(settings, n_items=1000, group=1, world_size=3)


def test_epoch_order_differs_between_epochs_and_ranks_do_not_overlap():
    settings = load_config("tiny").distill
    plan = BatchPlan.build(settings, n_items=40, group=1, world_size=2)
    rank0 = [i for b in epoch_micro_batches(plan, 40, 1, 7, 0, 0) for i in b]
    rank1 = [i for b in epoch_micro_batches(plan, 40, 1, 7, 0, 1) for i in b]
    assert not set(rank0) & set(rank1) and len(rank0) + len(rank1) == 40
    assert rank0 != [i for b in epoch_micro_batches(plan, 40, 1, 7, 1, 0) for i in b]
    pairs = epoch_micro_batches(
        BatchPlan.build(load_config("tiny").pretrain.student, 20, 2, 1), 20, 2, 7, 0, 0
    )
    assert all(b[k] % 2 == 0 and b[k + 1] == b[k] + 1 for b in pairs for k in range(0, len(b), 2))


def test_overrides_and_typos():
    config = load_config("tiny", ["distill.temperature=2", "teachers.1.load_in_4bit=true"])
    assert config.distill.temperature == 2.0 and config.teachers[1].load_in_4bit
    with pytest.raises(WsdmError, match=r"unknown field distill\.temprature"):
        load_config("tiny", ["distill.temprature=2"])
    with pytest.raises(WsdmError, match="expected a number"):
        load_config("tiny", ["distill.learning_rate=fast"])
    with pytest.raises(WsdmError, match="mode"):
        load_config("tiny", ["distill.mode=avg"])
    with pytest.raises(WsdmError, match="no such preset or file"):
        load_config("nope")


def test_shipped_deepspeed_configs_get_every_auto_value_filled():
    settings = load_config("reference").distill
    plan = BatchPlan.build(settings, n_items=1000, group=1, world_size=8)
    for name in ("zero2", "zero3"):
        config = deepspeed_config(resolve_deepspeed_config(name), settings, plan, bf16=True)
        assert "auto" not in json.dumps(config)
        assert config["train_batch_size"] == 64 and config["gradient_accumulation_steps"] == 8
        assert config["bf16"]["enabled"] is True and config["gradient_clipping"] == 1.0
    assert resolve_deepspeed_config("none") is None
