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

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from wsdm_serve.errors import WsdmError

from .backends import Backend, DeepSpeedBackend, PlainBackend, deepspeed_config, resolve_deepspeed_config
from .batches import Examples, Plan, collate, dev_metrics, epoch_micro_batches, score
from .config import StageSettings
from .distributed import DistContext, capture_rng, init_distributed, restore_rng, seed_everything
from .guards import NonFiniteError, check_logits, is_finite, name_rows
from .modeling import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LetterHead, LossParts

STATE_FILE = "trainer_state.json"
CHECKPOINT_INFO = "wsdm_checkpoint.json"

__all__ = [
    "Backend",
    "CHECKPOINT_INFO",
    "DeepSpeedBackend",
    "DistContext",
    "Examples",
    "Plan",
    "PlainBackend",
    "STATE_FILE",
    "StageResult",
    "StageRun",
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


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def save_adapter(peft_model, state: dict[str, torch.Tensor], directory: Path, info: dict) -> None:
    """PEFT ``save_pretrained`` (adapter_model.safetensors + adapter_config.json), swapped in whole."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
    for required in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        if not (tmp / required).exists():
            raise WsdmError(f"{tmp}: PEFT did not write {required}")
    (tmp / CHECKPOINT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    _swap_dir(tmp, directory)


def _swap_dir(new: Path, target: Path) -> None:
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def find_last(out_dir: Path) -> Path | None:
    """The resumable state; a crash between the two renames of a swap leaves it as ``last.old``."""
    for name in ("last", "last.old"):
        candidate = out_dir / name
        if (candidate / STATE_FILE).exists():
            return candidate
    return None


class MetricsLog:
    """JSON lines, one event per line, appended (a resumed run continues the same file)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------

LossFn = Callable[[LetterHead | Backend, dict], LossParts]


@dataclass
class StageRun:
    """Everything one training run needs; built by :mod:`wsdm_train.stages`."""

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


def _make_optimizer(head: LetterHead, settings: StageSettings, device: str):
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise WsdmError("the model has no trainable parameters")
    kwargs = {
        "lr": settings.learning_rate,
        "betas": tuple(settings.betas),
        "weight_decay": settings.weight_decay,
    }
    if device.startswith("cuda"):
        kwargs["fused"] = True
    return torch.optim.AdamW(params, **kwargs)


def _make_scheduler(optimizer, settings: StageSettings, plan: Plan):
    from transformers import get_scheduler

    return get_scheduler(
        settings.scheduler,
        optimizer=optimizer,
        num_warmup_steps=plan.warmup_steps,
        num_training_steps=plan.total_steps,
    )


def run_stage(run: StageRun) -> StageResult:
    """Train, evaluate on the cadence, keep the best adapter, checkpoint for resume, log metrics."""
    ctx, settings = run.ctx, run.settings
    out_dir = run.out_dir
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    plan = Plan.build(settings, run.train.n_items, run.train.group, ctx.world_size)
    log = MetricsLog(out_dir / "metrics.jsonl", ctx.is_main)

    optimizer = _make_optimizer(run.head, settings, ctx.device)
    scheduler = _make_scheduler(optimizer, settings, plan)
    if run.deepspeed is not None:
        config = deepspeed_config(run.deepspeed, settings, plan, run.bf16)
        backend: Backend = DeepSpeedBackend(run.head, optimizer, scheduler, settings, plan, ctx, config)
    else:
        backend = PlainBackend(run.head, optimizer, scheduler, settings, plan, ctx)

    state = {"epoch": 0, "micro": 0, "step": 0, "best_acc": -1.0, "best_step": -1, "last_eval_step": -1}
    resumed_from = None
    last = find_last(out_dir) if run.resume else None
    if last is not None:
        saved = json.loads((last / STATE_FILE).read_text())
        if saved.get("plan") != plan.__dict__:
            raise WsdmError(
                f"{last}: checkpoint was made with another plan ({saved.get('plan')}); resume with the same "
                "settings and process count, or pass --no-resume to start over"
            )
        backend.load_state(last)
        rng_file = last / f"rng_{ctx.rank}.pt"
        if rng_file.exists():
            restore_rng(torch.load(rng_file, weights_only=False))
        state.update(saved["state"])
        resumed_from = state["step"]
        log.write("resume", stage=run.name, step=state["step"], epoch=state["epoch"])
    elif ctx.is_main and (out_dir / "metrics.jsonl").exists() and not run.resume:
        (out_dir / "metrics.jsonl").unlink()
    if resumed_from is None:
        log.write(
            "start",
            stage=run.name,
            plan=plan.__dict__,
            settings=_jsonable(settings.__dict__),
            **run.extra_info,
        )

    def save_last() -> None:
        tmp = out_dir / "last.tmp"
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        ctx.barrier()
        backend.save_state(tmp)
        torch.save(capture_rng(), tmp / f"rng_{ctx.rank}.pt")
        ctx.barrier()
        if ctx.is_main:
            (tmp / STATE_FILE).write_text(
                json.dumps({"state": state, "plan": plan.__dict__}, indent=2) + "\n"
            )
            _swap_dir(tmp, out_dir / "last")
        ctx.barrier()
        log.write("checkpoint", stage=run.name, step=state["step"], epoch=state["epoch"])

    def adapter_info(kind: str, metrics: dict | None) -> dict:
        return {
            "stage": run.name,
            "kind": kind,
            "step": state["step"],
            "epoch": state["epoch"],
            "dev": metrics,
            **run.extra_info,
        }

    def evaluate(reason: str) -> None:
        logits = score(
            backend,
            run.dev,
            run.pad_id,
            settings.eval_batch_tokens,
            ctx,
            desc=f"{run.name} dev",
            progress=run.progress,
        )
        check_logits(
            logits,
            run.dev.keys,
            f"{run.name} dev set at step {state['step']}",
            "no checkpoint is chosen from it",
        )
        metrics = dev_metrics(logits, run.dev.labels)
        state["last_eval_step"] = state["step"]
        improved = metrics["acc"] >= state["best_acc"]  # ties go to the later checkpoint, as the reference
        log.write(
            "eval",
            stage=run.name,
            step=state["step"],
            epoch=state["epoch"],
            reason=reason,
            best=improved,
            **metrics,
        )
        if improved:
            state["best_acc"] = metrics["acc"]
            state["best_step"] = state["step"]
            weights = backend.trainable_state()
            if ctx.is_main:
                save_adapter(run.head.model, weights, out_dir / "best", adapter_info("best", metrics))
            ctx.barrier()
        if bar is not None:
            bar.set_postfix_str(f"dev acc {metrics['acc']:.4f} best {state['best_acc']:.4f}", refresh=False)

    step_rows: list[str] = []  # rows of the micro-batches accumulated into the coming step

    def stop(problem: str, rows: list[str], width: int | None = None) -> None:
        """Stop the stage at a non-finite number: one line, a metrics record, nothing saved."""
        fold = run.extra_info.get("fold")
        where = f"optimizer step {state['step'] + 1} (epoch {state['epoch'] + 1}"
        where += f", fold {fold})" if fold is not None else ")"
        batch = f"{len(rows)} rows" + (f" padded to {width} tokens" if width else "")
        kept = find_last(out_dir)
        if kept is not None:
            saved_step = json.loads((kept / STATE_FILE).read_text())["state"]["step"]
            kept_text = f"the last good checkpoint is {kept} (step {saved_step})"
        else:
            kept_text = "no checkpoint was saved yet"
        log.write("nonfinite", stage=run.name, step=state["step"] + 1, problem=problem, rows=rows)
        if bar is not None:
            bar.close()
        raise NonFiniteError(
            f"{run.name}: {problem} at {where} on {batch}: {name_rows(rows)}; "
            f"stopped {backend.stops_at}, {kept_text}"
        )

    def check_norm(norm: float | None) -> None:
        if ctx.max_int(0 if is_finite(norm) else 1):
            stop(f"the gradient norm is {norm}", step_rows)

    bar = None
    if ctx.is_main and run.progress:
        bar = tqdm(
            total=plan.total_steps, initial=state["step"], desc=run.name, unit="step", dynamic_ncols=True
        )
    backend.train()
    cadence = settings.eval
    window = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "cos": 0.0, "n": 0, "tokens": 0, "t0": time.time()}
    done = state["step"] >= plan.total_steps
    while not done and state["epoch"] < settings.epochs:
        epoch = state["epoch"]
        batches = epoch_micro_batches(
            plan, run.train.n_items, run.train.group, settings.seed, epoch, ctx.rank
        )
        if state["micro"] == 0 and cadence.at_epoch_start and state["last_eval_step"] != state["step"]:
            evaluate("epoch_start")
            backend.train()
        for micro in range(state["micro"], len(batches)):
            boundary = (micro + 1) % plan.grad_accum == 0 or micro == len(batches) - 1
            batch = collate(run.train, batches[micro], run.pad_id, ctx.device)
            rows = [run.train.keys[i] for i in batches[micro]]
            parts = run.loss_fn(backend, batch)
            loss_value = float(parts.total.detach())
            if ctx.max_int(0 if is_finite(loss_value) else 1):
                stop(f"the loss is {loss_value}", rows, int(batch["input_ids"].shape[1]))
            backend.backward(parts.total, boundary)
            step_rows.extend(rows)
            window["loss"] += loss_value
            window["ce"] += float(parts.ce)
            if parts.kl is not None:
                window["kl"] += float(parts.kl)
                window["cos"] += float(parts.cos)
            window["n"] += 1
            window["tokens"] += batch["n_tokens"]
            if not boundary:
                continue
            grad_norm = backend.step(check_norm)
            step_rows = []
            state["step"] += 1
            state["micro"] = micro + 1
            if state["micro"] >= len(batches):
                state["epoch"] += 1
                state["micro"] = 0
            step = state["step"]
            if bar is not None:
                bar.update(1)
            if step % max(settings.log_every, 1) == 0 or step == plan.total_steps:
                elapsed = max(time.time() - window["t0"], 1e-9)
                n = max(window["n"], 1)
                record = {
                    "loss": window["loss"] / n,
                    "ce": window["ce"] / n,
                    "lr": backend.lr(),
                    "grad_norm": grad_norm,
                    "tokens_per_s": window["tokens"] * ctx.world_size / elapsed,
                }
                if ctx.device.startswith("cuda"):
                    record["peak_memory_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
                if window["kl"]:
                    record.update(kl=window["kl"] / n, cos=window["cos"] / n)
                log.write("train", stage=run.name, step=step, epoch=epoch, **record)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
                window = {
                    "loss": 0.0,
                    "ce": 0.0,
                    "kl": 0.0,
                    "cos": 0.0,
                    "n": 0,
                    "tokens": 0,
                    "t0": time.time(),
                }
            epoch_end = state["micro"] == 0
            done = step >= plan.total_steps
            periodic = (
                cadence.every_steps > 0 and step % cadence.every_steps == 0 and step > plan.eval_start_step
            )
            evaluated = False
            if periodic or ((epoch_end or done) and cadence.at_epoch_end):
                evaluate("epoch_end" if epoch_end or done else "periodic")
                backend.train()
                evaluated = True
            checkpoint_due = settings.checkpoint_every > 0 and step % settings.checkpoint_every == 0
            if evaluated or checkpoint_due or epoch_end or done:
                save_last()
            if done or epoch_end:
                break
    if bar is not None:
        bar.close()

    weights = backend.trainable_state()
    if ctx.is_main:
        save_adapter(run.head.model, weights, out_dir / "final", adapter_info("final", None))
        if not (out_dir / "best").exists():
            # No evaluation ever ran (all cadence switches off): the final weights are the result.
            save_adapter(run.head.model, weights, out_dir / "best", adapter_info("final", None))
    ctx.barrier()
    log.write(
        "end", stage=run.name, steps=state["step"], best_acc=state["best_acc"], best_step=state["best_step"]
    )
    return StageResult(out_dir, state["best_acc"], state["best_step"], state["step"], resumed_from)


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
