"""One training loop for every stage: plain PyTorch (CPU, one GPU, DDP) or a DeepSpeed engine.

Why a plain loop and not the HF Trainer: the recipe needs (a) a row and its swapped copy in one
micro-batch, (b) losses over two letter logits that a Trainer would have to be bent around,
(c) evaluation on a cadence mixing epoch starts/ends with every-N-steps after a fraction of
epoch 1, and (d) adapter-only checkpoints plus a resumable ``last/`` state. Each is a few lines
here, while DeepSpeed's own engine already does ZeRO-2/3 sharding, bf16, clipping and sharded
optimizer checkpoints from a JSON config. So the loop owns the schedule and the engine owns the
arithmetic; without ``--deepspeed`` the same loop runs on CPU (the tests) or under DDP.

Units: a *micro-step* is one forward/backward of ``per_device_batch`` sequences on each process;
an *optimizer step* consumes ``effective_batch`` sequences over all processes. The gradient
accumulation is ``effective_batch / (per_device_batch * world_size)``; evaluation cadence and
warmup are counted in optimizer steps, so they mean the same on any number of GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from wsdm_serve.errors import WsdmError

from ..config import StageSettings
from .backends import (
    Backend,
    DeepSpeedBackend,
    PlainBackend,
    deepspeed_config,
    make_backend,
    resolve_deepspeed_config,
)
from .batches import BatchPlan, Examples, collate, dev_metrics, epoch_micro_batches, score
from .checkpoints import (
    CHECKPOINT_INFO,
    STATE_FILE,
    LossWindow,
    MetricsLog,
    find_last,
    read_state,
    save_adapter,
    swap_dir,
)
from .distributed import DistContext, capture_rng, init_distributed, restore_rng, seed_everything
from .guards import NonFiniteError, check_logits, is_finite, name_rows
from .modeling import LetterHead, LossParts

__all__ = [
    "CHECKPOINT_INFO",
    "STATE_FILE",
    "Backend",
    "DeepSpeedBackend",
    "DistContext",
    "Examples",
    "BatchPlan",
    "PlainBackend",
    "StageResult",
    "StageRun",
    "Trainer",
    "TrainState",
    "collate",
    "deepspeed_config",
    "dev_metrics",
    "epoch_micro_batches",
    "find_last",
    "init_distributed",
    "resolve_deepspeed_config",
    "run_stage",
    "save_adapter",
    "score",
    "seed_everything",
]

LossFn = Callable[[LetterHead | Backend, dict], LossParts]


@dataclass
class StageRun:
    """Everything one training run needs; built by :mod:`wsdm_train.training.stages`."""

    name: str
    out_dir: Path
    settings: StageSettings
    head: LetterHead
    train: Examples
    dev: Examples
    loss_fn: LossFn
    pad_id: int
    ctx: DistContext
    deepspeed: Path | None = None
    resume: bool = True
    progress: bool = True
    bf16: bool = False
    extra_info: dict = field(default_factory=dict)


@dataclass
class StageResult:
    out_dir: Path
    best_acc: float
    best_step: int
    steps: int
    resumed_from: int | None


@dataclass
class TrainState:
    """Where a run is: saved in ``last/`` at every checkpoint and restored on resume."""

    epoch: int = 0
    micro: int = 0  # micro-batches of the current epoch already taken
    step: int = 0  # optimizer steps taken
    best_acc: float = -1.0
    best_step: int = -1
    last_eval_step: int = -1


class Trainer:
    """One training run of any stage: set-up, the loop, evaluation on the cadence, save and resume.

    Train, evaluate on the cadence, keep the best adapter, checkpoint for resume, log metrics. The
    stages differ only in their data, starting adapter and loss (:class:`StageRun`); everything
    else is here, so post-pretraining, fine-tuning and distillation step, evaluate, save and resume
    the same way.
    """

    def __init__(self, run: StageRun) -> None:
        self.run, self.ctx, self.settings, self.out_dir = run, run.ctx, run.settings, run.out_dir
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ctx.barrier()
        self.plan = BatchPlan.build(self.settings, run.train.n_items, run.train.group, self.ctx.world_size)
        self.log = MetricsLog(self.out_dir / "metrics.jsonl", self.ctx.is_main)
        self.backend = make_backend(run.head, self.settings, self.plan, self.ctx, run.deepspeed, run.bf16)
        self.state = TrainState()
        self.resumed_from: int | None = None
        self.window = LossWindow()
        self.step_rows: list[str] = []  # rows of the micro-batches accumulated into the coming step
        self.bar = None

    # -- the run

    def fit(self) -> StageResult:
        self._resume_or_start()
        if self.ctx.is_main and self.run.progress:
            self.bar = tqdm(
                total=self.plan.total_steps,
                initial=self.state.step,
                desc=self.run.name,
                unit="step",
                dynamic_ncols=True,
            )
        self.backend.train()
        done = self.state.step >= self.plan.total_steps
        while not done and self.state.epoch < self.settings.epochs:
            done = self._epoch()
        if self.bar is not None:
            self.bar.close()
        self._save_final()
        state = self.state
        self.log.write(
            "end", stage=self.run.name, steps=state.step, best_acc=state.best_acc, best_step=state.best_step
        )
        return StageResult(self.out_dir, state.best_acc, state.best_step, state.step, self.resumed_from)

    def _epoch(self) -> bool:
        """The rest of the current epoch; returns whether the run has taken all its steps."""
        state, plan, run = self.state, self.plan, self.run
        epoch = state.epoch
        batches = epoch_micro_batches(
            plan, run.train.n_items, run.train.group, self.settings.seed, epoch, self.ctx.rank
        )
        if state.micro == 0 and self.settings.eval.at_epoch_start and state.last_eval_step != state.step:
            self.evaluate("epoch_start")
        for micro in range(state.micro, len(batches)):
            boundary = (micro + 1) % plan.grad_accum == 0 or micro == len(batches) - 1
            self._micro_step(batches[micro], boundary)
            if not boundary:
                continue
            grad_norm = self.backend.step(self._check_norm)
            self.step_rows = []
            state.step += 1
            state.micro = micro + 1
            if state.micro >= len(batches):
                state.epoch += 1
                state.micro = 0
            if self.bar is not None:
                self.bar.update(1)
            self._log_train(epoch, grad_norm)
            epoch_end, done = state.micro == 0, state.step >= plan.total_steps
            self._evaluate_and_checkpoint(epoch_end, done)
            if done or epoch_end:
                break
        return state.step >= plan.total_steps

    def _micro_step(self, indices: list[int], boundary: bool) -> None:
        """Forward and backward of one micro-batch; a non-finite loss stops the run before its backward."""
        run, ctx = self.run, self.ctx
        batch = collate(run.train, indices, run.pad_id, ctx.device)
        rows = [run.train.keys[i] for i in indices]
        parts = run.loss_fn(self.backend, batch)
        loss_value = float(parts.total.detach())
        if ctx.max_int(0 if is_finite(loss_value) else 1):
            self._stop(f"the loss is {loss_value}", rows, int(batch["input_ids"].shape[1]))
        self.backend.backward(parts.total, boundary)
        self.step_rows.extend(rows)
        self.window.add(parts, loss_value, batch["n_tokens"])

    def _log_train(self, epoch: int, grad_norm: float | None) -> None:
        step = self.state.step
        if step % max(self.settings.log_every, 1) and step != self.plan.total_steps:
            return
        record = self.window.record(self.backend.lr(), grad_norm, self.ctx.world_size, self.ctx.device)
        self.log.write("train", stage=self.run.name, step=step, epoch=epoch, **record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
        self.window = LossWindow()

    def _evaluate_and_checkpoint(self, epoch_end: bool, done: bool) -> None:
        """Score the dev set when the cadence says so; save ``last/`` after it and when due."""
        step, cadence = self.state.step, self.settings.eval
        periodic = (
            cadence.every_steps > 0 and step % cadence.every_steps == 0 and step > self.plan.eval_start_step
        )
        evaluated = periodic or ((epoch_end or done) and cadence.at_epoch_end)
        if evaluated:
            self.evaluate("epoch_end" if epoch_end or done else "periodic")
        checkpoint_due = self.settings.checkpoint_every > 0 and step % self.settings.checkpoint_every == 0
        if evaluated or checkpoint_due or epoch_end or done:
            self.save_last()

    # -- evaluation

    def evaluate(self, reason: str) -> None:
        """Score the dev rows; the best accuracy so far (ties: the later step) becomes ``best/``."""
        run, ctx, state = self.run, self.ctx, self.state
        logits = score(
            self.backend,
            run.dev,
            run.pad_id,
            self.settings.eval_batch_tokens,
            ctx,
            desc=f"{run.name} dev",
            progress=run.progress,
        )
        check_logits(
            logits,
            run.dev.keys,
            f"{run.name} dev set at step {state.step}",
            "no checkpoint is chosen from it",
        )
        metrics = dev_metrics(logits, run.dev.labels)
        state.last_eval_step = state.step
        improved = metrics["acc"] >= state.best_acc  # ties go to the later checkpoint, as the reference
        self.log.write(
            "eval",
            stage=run.name,
            step=state.step,
            epoch=state.epoch,
            reason=reason,
            best=improved,
            **metrics,
        )
        if improved:
            state.best_acc, state.best_step = metrics["acc"], state.step
            weights = self.backend.trainable_state()
            if ctx.is_main:
                save_adapter(
                    run.head.model, weights, self.out_dir / "best", self._adapter_info("best", metrics)
                )
            ctx.barrier()
        if self.bar is not None:
            self.bar.set_postfix_str(f"dev acc {metrics['acc']:.4f} best {state.best_acc:.4f}", refresh=False)
        self.backend.train()

    # -- save and resume

    def _adapter_info(self, kind: str, metrics: dict | None) -> dict:
        state = self.state
        return {
            "stage": self.run.name,
            "kind": kind,
            "step": state.step,
            "epoch": state.epoch,
            "dev": metrics,
            **self.run.extra_info,
        }

    def save_last(self) -> None:
        """The resumable state (engine, RNG of every process, where the loop is), swapped in whole."""
        ctx, tmp = self.ctx, self.out_dir / "last.tmp"
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        ctx.barrier()
        self.backend.save_state(tmp)
        torch.save(capture_rng(), tmp / f"rng_{ctx.rank}.pt")
        ctx.barrier()
        if ctx.is_main:
            saved = {"state": dataclasses.asdict(self.state), "plan": self.plan.__dict__}
            (tmp / STATE_FILE).write_text(json.dumps(saved, indent=2) + "\n")
            swap_dir(tmp, self.out_dir / "last")
        ctx.barrier()
        self.log.write("checkpoint", stage=self.run.name, step=self.state.step, epoch=self.state.epoch)

    def _resume_or_start(self) -> None:
        last = find_last(self.out_dir) if self.run.resume else None
        if last is not None:
            self._resume(last)
            return
        metrics = self.out_dir / "metrics.jsonl"
        if self.ctx.is_main and metrics.exists() and not self.run.resume:
            metrics.unlink()
        self.log.write(
            "start",
            stage=self.run.name,
            plan=self.plan.__dict__,
            settings=_jsonable(self.settings.__dict__),
            **self.run.extra_info,
        )

    def _resume(self, last: Path) -> None:
        saved = read_state(last)
        if saved.get("plan") != self.plan.__dict__:
            raise WsdmError(
                f"{last}: checkpoint was made with another plan ({saved.get('plan')}); resume with the same "
                "settings and process count, or pass --no-resume to start over"
            )
        self.backend.load_state(last)
        rng_file = last / f"rng_{self.ctx.rank}.pt"
        if rng_file.exists():
            restore_rng(torch.load(rng_file, weights_only=False))
        self.state = TrainState(**saved["state"])
        self.resumed_from = self.state.step
        self.log.write("resume", stage=self.run.name, step=self.state.step, epoch=self.state.epoch)

    def _save_final(self) -> None:
        weights = self.backend.trainable_state()
        if self.ctx.is_main:
            model = self.run.head.model
            save_adapter(model, weights, self.out_dir / "final", self._adapter_info("final", None))
            if not (self.out_dir / "best").exists():
                # No evaluation ever ran (all cadence switches off): the final weights are the result.
                save_adapter(model, weights, self.out_dir / "best", self._adapter_info("final", None))
        self.ctx.barrier()

    # -- non-finite numbers

    def _check_norm(self, norm: float | None) -> None:
        if self.ctx.max_int(0 if is_finite(norm) else 1):
            self._stop(f"the gradient norm is {norm}", self.step_rows)

    def _stop(self, problem: str, rows: list[str], width: int | None = None) -> None:
        """Stop the stage at a non-finite number: one line, a metrics record, nothing saved."""
        state = self.state
        fold = self.run.extra_info.get("fold")
        where = f"optimizer step {state.step + 1} (epoch {state.epoch + 1}"
        where += f", fold {fold})" if fold is not None else ")"
        batch = f"{len(rows)} rows" + (f" padded to {width} tokens" if width else "")
        kept = find_last(self.out_dir)
        if kept is not None:
            kept_text = f"the last good checkpoint is {kept} (step {read_state(kept)['state']['step']})"
        else:
            kept_text = "no checkpoint was saved yet"
        self.log.write("nonfinite", stage=self.run.name, step=state.step + 1, problem=problem, rows=rows)
        if self.bar is not None:
            self.bar.close()
        raise NonFiniteError(
            f"{self.run.name}: {problem} at {where} on {batch}: {name_rows(rows)}; "
            f"stopped {self.backend.stops_at}, {kept_text}"
        )


def run_stage(run: StageRun) -> StageResult:
    """Train one stage run to its end (or resume it): :meth:`Trainer.fit`."""
    return Trainer(run).fit()


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(value.__dict__)
    if isinstance(value, Path):
        return str(value)
    return value
