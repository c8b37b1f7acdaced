"""Training data as token sequences, their right-padded batches, the step plan, and scoring.

Units: a *micro-step* is one forward/backward of ``per_device_batch`` sequences on each process;
an *optimizer step* consumes ``effective_batch`` sequences over all processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from wsdm_serve.engines.base import length_sorted_batches
from wsdm_serve.errors import WsdmError

from ..config import StageSettings
from .distributed import DistContext
from .modeling import log_loss


@dataclass
class Examples:
    """Token sequences with labels; ``group`` consecutive sequences form one item (a row and its swap).

    ``teacher`` holds the teachers' raw A/B logits per sequence, ``[n, n_teachers, 2]``.
    """

    ids: list[np.ndarray]
    labels: np.ndarray
    keys: list[str]
    group: int = 1
    teacher: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.labels) or len(self.ids) != len(self.keys):
            raise ValueError("ids, labels and keys must have one entry per sequence")
        if len(self.ids) % self.group:
            raise ValueError("sequence count is not a multiple of the group size")
        if any(len(seq) == 0 for seq in self.ids):
            raise WsdmError("a training sequence has no tokens")

    @property
    def n_items(self) -> int:
        return len(self.ids) // self.group

    def __len__(self) -> int:
        return len(self.ids)


def collate(examples: Examples, sequence_indices: list[int], pad_id: int, device: str) -> dict:
    """Right-padded tensors of the given sequences (the head reads each row's last real token)."""
    lengths = [len(examples.ids[i]) for i in sequence_indices]
    width = max(lengths)
    input_ids = torch.full((len(sequence_indices), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequence_indices), width), dtype=torch.long)
    for row, index in enumerate(sequence_indices):
        input_ids[row, : lengths[row]] = torch.as_tensor(examples.ids[index], dtype=torch.long)
        attention_mask[row, : lengths[row]] = 1
    batch = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "labels": torch.as_tensor(examples.labels[sequence_indices], dtype=torch.long).to(device),
        "n_tokens": int(sum(lengths)),
    }
    if examples.teacher is not None:
        batch["teacher"] = torch.as_tensor(examples.teacher[sequence_indices], dtype=torch.float32).to(device)
    return batch


@dataclass(frozen=True)
class BatchPlan:
    """The step arithmetic of a run, fixed at start and checked again on resume."""

    world_size: int
    grad_accum: int
    items_per_micro: int
    items_per_rank: int
    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_start_step: int

    @classmethod
    def build(cls, settings: StageSettings, n_items: int, group: int, world_size: int) -> BatchPlan:
        per_process = settings.per_device_batch * world_size
        if settings.per_device_batch % group:
            raise WsdmError(f"per_device_batch {settings.per_device_batch} must be a multiple of {group}")
        if settings.effective_batch % per_process:
            raise WsdmError(
                f"effective_batch {settings.effective_batch} is not a multiple of per_device_batch "
                f"{settings.per_device_batch} x {world_size} process(es); change one of them"
            )
        grad_accum = settings.effective_batch // per_process
        items_per_micro = settings.per_device_batch // group
        items_per_rank = n_items // world_size
        if items_per_rank < items_per_micro:
            raise WsdmError(
                f"only {n_items} training item(s) for {world_size} process(es) x {items_per_micro} per micro-batch"
            )
        micro = math.ceil(items_per_rank / items_per_micro)
        steps_per_epoch = math.ceil(micro / grad_accum)
        total = steps_per_epoch * settings.epochs
        if settings.max_steps:
            total = min(total, settings.max_steps)
        cadence = settings.eval
        start = max(cadence.start_step, math.ceil(cadence.start_fraction * steps_per_epoch))
        return cls(
            world_size=world_size,
            grad_accum=grad_accum,
            items_per_micro=items_per_micro,
            items_per_rank=items_per_rank,
            micro_per_epoch=micro,
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            warmup_steps=settings.warmup_for(total),
            eval_start_step=start,
        )


def epoch_micro_batches(
    plan: BatchPlan, n_items: int, group: int, seed: int, epoch: int, rank: int
) -> list[list[int]]:
    """This rank's micro-batches (as sequence indices) for ``epoch``; a fresh shuffle every epoch."""
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    mine = order[rank :: plan.world_size][: plan.items_per_rank]
    batches = []
    for start in range(0, len(mine), plan.items_per_micro):
        items = mine[start : start + plan.items_per_micro]
        batches.append([int(item) * group + offset for item in items for offset in range(group)])
    return batches


def score(
    backend_or_head,
    examples: Examples,
    pad_id: int,
    batch_tokens: int,
    ctx: DistContext,
    desc: str = "score",
    progress: bool = True,
) -> np.ndarray:
    """A/B logits of every sequence, ``[n, 2]`` float32, split over the processes.

    Each process takes every ``world``-th sequence (no padding rows, so nothing is counted twice)
    and runs the same number of forward calls, which ZeRO-3's collective gathers require.
    """
    mine = list(range(ctx.rank, len(examples), ctx.world_size))
    lengths = [len(examples.ids[i]) for i in mine]
    batches = [[mine[j] for j in batch] for batch in length_sorted_batches(lengths, batch_tokens)]
    n_calls = ctx.max_int(len(batches))
    was_training = backend_or_head.module.training if hasattr(backend_or_head, "module") else False
    backend_or_head.eval() if hasattr(backend_or_head, "eval") else None
    results: dict[int, np.ndarray] = {}
    bar = tqdm(
        total=len(examples), desc=desc, unit="seq", disable=not (progress and ctx.is_main), leave=False
    )
    with torch.no_grad():
        for call in range(n_calls):
            batch = (
                batches[call]
                if call < len(batches)
                else (batches[-1] if batches else [mine[0] if mine else 0])
            )
            tensors = collate(examples, batch, pad_id, ctx.device)
            letters, _ = backend_or_head(tensors["input_ids"], tensors["attention_mask"])
            if call < len(batches):
                for index, row in zip(batch, letters.float().cpu().numpy(), strict=True):
                    results[index] = row
                bar.update(len(batch) * ctx.world_size)
    bar.close()
    if was_training:
        backend_or_head.train()
    merged: dict[int, np.ndarray] = {}
    for part in ctx.gather_objects(results):
        merged.update(part)
    out = np.zeros((len(examples), 2), dtype=np.float32)
    for index, row in merged.items():
        out[index] = row
    return out


def dev_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy of argmax and log loss of the 2-way softmax (ties count as B, as at inference)."""
    z = logits.astype(np.float64)
    p_b = 1.0 / (1.0 + np.exp(z[:, 0] - z[:, 1]))
    predictions = (z[:, 1] >= z[:, 0]).astype(np.int64)
    return {
        "acc": float((predictions == labels).mean()) if len(labels) else math.nan,
        "log_loss": log_loss(p_b, labels),
        "n": int(len(labels)),
    }
