"""Optimisation and evaluation settings of the training stages (pretrain, finetune, distill).

Batch sizes are counted in sequences. ``effective_batch`` is what one optimizer step sees over all
GPUs together; the gradient accumulation is derived from it and the world size at run time, so the
recipe is the same on 1 GPU or 64.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Literal, get_args

from .types import Count, FieldError, Float, Int, NonNegative, PositiveFloat, section

Scheduler = Literal["cosine", "linear", "constant_with_warmup", "constant"]
PretrainLoss = Literal["letter_lm", "two_way"]
Handoff = Literal["final", "best"]
DistillMode = Literal["reference", "mean_target"]
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)
PRETRAIN_LOSSES: tuple[str, ...] = get_args(PretrainLoss)
HANDOFFS: tuple[str, ...] = get_args(Handoff)
DISTILL_MODES: tuple[str, ...] = get_args(DistillMode)


@section
class EvalCadence:
    """When the dev set is scored, in optimizer steps (independent of the GPU count).

    The reference scored at the first and last micro-step of each epoch and every N micro-steps
    once past a fraction of epoch 1; with its fixed accumulation those N micro-steps are N / GA
    optimizer steps, which is what ``every_steps`` holds.
    """

    at_epoch_start: bool = True
    at_epoch_end: bool = True
    every_steps: NonNegative = 0
    start_fraction: Float = 0.0
    start_step: NonNegative = 0


@section
class StageSettings:
    """Optimisation settings shared by every training stage."""

    epochs: Count = 1
    learning_rate: PositiveFloat = 5e-5
    effective_batch: Count = 64
    per_device_batch: Count = 1
    warmup_steps: NonNegative = 0
    warmup_ratio: Float = 0.015
    scheduler: Scheduler = "cosine"
    betas: tuple[Float, Float] = (0.9, 0.95)
    weight_decay: Float = 0.0
    max_grad_norm: Float = 1.0
    seed: Int = 1234
    eval: EvalCadence = field(default_factory=EvalCadence)
    eval_batch_tokens: Count = 16384
    deepspeed: str | None = None
    max_steps: NonNegative = 0
    """0: no limit."""
    log_every: Int = 10
    checkpoint_every: NonNegative = 0

    def warmup_for(self, total_steps: int) -> int:
        """Fixed warmup steps if given, else ceil(ratio x total) as the reference's fine-tunes."""
        if self.warmup_steps > 0:
            return self.warmup_steps
        return math.ceil(self.warmup_ratio * total_steps)


@section
class PretrainSettings(StageSettings):
    """Post-pretraining on the extra (ut) preference rows.

    ``letter_lm``: full-vocabulary next-token CE on the answer letter (the student's recipe);
    ``two_way``: CE over the two letter logits (the teachers'). ``both_orders`` puts a row and its
    swapped copy in the same micro-batch. ``dev_rows`` rows are held out of training for the dev
    score, a repeated pair (the same texts, either order) wholly on one side (the reference sampled
    its dev rows from the training rows). ``handoff`` is the
    checkpoint later stages start from: the reference's post-pretrain folder ended up holding the
    final weights.
    """

    loss: PretrainLoss = "letter_lm"
    both_orders: bool = True
    dev_rows: Int = 100
    handoff: Handoff = "final"

    def __post_init__(self) -> None:
        if self.both_orders and self.per_device_batch % 2:
            raise FieldError(
                "per_device_batch",
                "pretrain with both_orders needs an even per_device_batch (a row and its swap)",
            )


def _student_pretrain() -> PretrainSettings:
    """2 sequences (a row and its swap) x GA 8 x 8 GPUs in the reference."""
    return PretrainSettings(
        loss="letter_lm",
        both_orders=True,
        learning_rate=5e-5,
        effective_batch=128,
        per_device_batch=2,
        warmup_steps=100,
        eval=EvalCadence(at_epoch_start=True, at_epoch_end=True, every_steps=1000, start_step=163),
        deepspeed="zero2",
    )


def _teacher_pretrain() -> PretrainSettings:
    """8 sequences x GA 2 x 8 GPUs, one (randomly swapped) order per row in the reference."""
    return PretrainSettings(
        loss="two_way",
        both_orders=False,
        learning_rate=1e-5,
        effective_batch=128,
        per_device_batch=8,
        warmup_steps=100,
        eval=EvalCadence(at_epoch_start=True, at_epoch_end=False, every_steps=4000, start_step=650),
        deepspeed="zero2",
    )


@section
class PretrainSections:
    student: PretrainSettings = field(default_factory=_student_pretrain)
    teacher: PretrainSettings = field(default_factory=_teacher_pretrain)


@section
class FinetuneSettings(StageSettings):
    """Per-fold teacher fine-tune with the 2-way CE, starting from the post-pretrained adapter.

    The reference: 4 sequences x GA 4 x 8 GPUs, 2 epochs at 1e-5.
    """

    epochs: Count = 2
    learning_rate: PositiveFloat = 1e-5
    effective_batch: Count = 128
    per_device_batch: Count = 4
    eval: EvalCadence = field(default_factory=lambda: EvalCadence(every_steps=100, start_fraction=0.5))
    deepspeed: str | None = "zero2"
    init_from_pretrain: bool = True


@section
class DistillSettings(StageSettings):
    """Per-fold student distillation from every teacher's fold logits.

    ``teacher_predictions`` maps a teacher name to a predictions file pattern with ``{fold}``
    (the reference's "fast train" path); teachers not named use the teacher-predict output.
    ``missing_teacher_logits``: ``error`` stops when a training row has no logits from some
    teacher; ``drop`` trains without those rows and reports how many were dropped.
    The reference: 1 sequence x GA 8 x 8 GPUs, 2 epochs at 5e-5.
    """

    epochs: Count = 2
    learning_rate: PositiveFloat = 5e-5
    effective_batch: Count = 64
    per_device_batch: Count = 1
    eval: EvalCadence = field(default_factory=lambda: EvalCadence(every_steps=50, start_fraction=0.67))
    deepspeed: str | None = "zero2"
    temperature: PositiveFloat = 1.0
    mode: DistillMode = "reference"
    init_from_pretrain: bool = True
    missing_teacher_logits: Literal["error", "drop"] = "error"
    teacher_predictions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, pattern in self.teacher_predictions.items():
            if "{fold}" not in pattern:
                raise FieldError(f"teacher_predictions.{name}", "the path must contain {fold}")


@section
class TeacherPredictSettings:
    """Tokens per scoring batch when the fine-tuned teachers write their logits."""

    batch_tokens: Count = 16384
