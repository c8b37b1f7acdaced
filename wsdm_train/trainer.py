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
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from wsdm_serve.engines.base import length_sorted_batches
from wsdm_serve.errors import WsdmError

from .config import StageSettings
from .modeling import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LetterHead, LossParts, log_loss

DEEPSPEED_DIR = Path(__file__).parent / "deepspeed"
STATE_FILE = "trainer_state.json"
CHECKPOINT_INFO = "wsdm_checkpoint.json"


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


@dataclass
class DistContext:
    """Where this process sits; filled from the variables torchrun / the deepspeed launcher set."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def gather_objects(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def max_int(self, value: int) -> int:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.long, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return int(tensor.item())

    def broadcast_object(self, obj):
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


_CONTEXT: DistContext | None = None


def init_distributed(use_deepspeed: bool, device: str = "auto") -> DistContext:
    """Start the process group once (a no-op for one CPU process without DeepSpeed)."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local_rank}"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise WsdmError(f"--device {device}: no CUDA GPU is visible")
        torch.cuda.set_device(torch.device(device))
    if use_deepspeed:
        # The engine wants a process group even for one process.
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + (os.getpid() % 1000)))
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if device.startswith("cuda") else "gloo")
    elif world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    _CONTEXT = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)
    return _CONTEXT


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def capture_rng() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


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
class Plan:
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
    def build(cls, settings: StageSettings, n_items: int, group: int, world_size: int) -> Plan:
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
    plan: Plan, n_items: int, group: int, seed: int, epoch: int, rank: int
) -> list[list[int]]:
    """This rank's micro-batches (as sequence indices) for ``epoch``; a fresh shuffle every epoch."""
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    mine = order[rank :: plan.world_size][: plan.items_per_rank]
    batches = []
    for start in range(0, len(mine), plan.items_per_micro):
        items = mine[start : start + plan.items_per_micro]
        batches.append([int(item) * group + offset for item in items for offset in range(group)])
    return batches


# --------------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------------


class Backend:
    """What the loop needs from the engine: forward, backward, step, save and load of state."""

    module: torch.nn.Module

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()


class PlainBackend(Backend):
    """torch AdamW on one process, or under DDP when several processes run without DeepSpeed."""

    def __init__(
        self, head: LetterHead, optimizer, scheduler, settings: StageSettings, plan: Plan, ctx: DistContext
    ):
        self.head = head
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.settings = settings
        self.plan = plan
        self.ctx = ctx
        self.params = [p for p in head.parameters() if p.requires_grad]
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [torch.device(ctx.device).index] if ctx.device.startswith("cuda") else None
            self.module = DistributedDataParallel(head, device_ids=device_ids)
        else:
            self.module = head

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        sync = nullcontext() if boundary or not self.ctx.distributed else self.module.no_sync()
        with sync:
            (loss / self.plan.grad_accum).backward()

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {
            name: p.detach().cpu().clone()
            for name, p in self.head.model.named_parameters()
            if p.requires_grad
        }

    def save_state(self, directory: Path) -> None:
        if self.ctx.is_main:
            torch.save(
                {
                    "trainable": self.trainable_state(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                },
                directory / "state.pt",
            )

    def load_state(self, directory: Path) -> None:
        state = torch.load(directory / "state.pt", map_location=self.ctx.device, weights_only=False)
        named = {name: p for name, p in self.head.model.named_parameters() if p.requires_grad}
        saved = state["trainable"]
        if set(saved) != set(named):
            raise WsdmError(f"{directory}: checkpoint parameters do not match the model being trained")
        with torch.no_grad():
            for name, param in named.items():
                param.copy_(saved[name].to(param.device, param.dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class DeepSpeedBackend(Backend):
    """A DeepSpeed engine built from a JSON config whose ``auto`` values this run fills in."""

    def __init__(
        self, head, optimizer, scheduler, settings: StageSettings, plan: Plan, ctx: DistContext, config: dict
    ):
        import deepspeed

        self.head = head
        self.ctx = ctx
        self.config = config
        self.module, _, _, self.scheduler = deepspeed.initialize(
            model=head, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.stage = int(config.get("zero_optimization", {}).get("stage", 0))

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        self.module.set_gradient_accumulation_boundary(boundary)
        self.module.backward(loss)

    def step(self) -> float:
        self.module.step()
        norm = self.module.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        return float(self.module.get_lr()[0])

    def trainable_state(self) -> dict[str, torch.Tensor]:
        named = [(name, p) for name, p in self.head.model.named_parameters() if p.requires_grad]
        if self.stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
                return {name: p.detach().cpu().clone() for name, p in named} if self.ctx.is_main else {}
        return {name: p.detach().cpu().clone() for name, p in named}

    def save_state(self, directory: Path) -> None:
        self.module.save_checkpoint(str(directory), tag="engine", exclude_frozen_parameters=True)

    def load_state(self, directory: Path) -> None:
        path, _ = self.module.load_checkpoint(
            str(directory),
            tag="engine",
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise WsdmError(f"{directory}: no DeepSpeed state to resume from")


def resolve_deepspeed_config(name_or_path: str | None) -> Path | None:
    """``zero2`` / ``zero3`` name the shipped configs; anything else is a JSON path; none/off disables."""
    if name_or_path in (None, "", "none", "off"):
        return None
    shipped = DEEPSPEED_DIR / f"{name_or_path}.json"
    if shipped.exists():
        return shipped
    path = Path(name_or_path)
    if not path.exists():
        raise WsdmError(f"{path}: DeepSpeed config not found (shipped: zero2, zero3)")
    return path


def deepspeed_config(path: Path, settings: StageSettings, plan: Plan, bf16: bool) -> dict:
    """The JSON config with every ``auto`` value replaced by this run's numbers."""
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WsdmError(f"{path}: not valid JSON ({exc.msg})") from exc
    if "optimizer" in config or "scheduler" in config:
        raise WsdmError(f"{path}: remove 'optimizer'/'scheduler'; the stage settings define them")
    micro = plan.items_per_micro * (settings.per_device_batch // plan.items_per_micro)
    values = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": plan.grad_accum,
        "train_batch_size": micro * plan.grad_accum * plan.world_size,
        "gradient_clipping": settings.max_grad_norm,
    }
    for key, value in values.items():
        current = config.get(key, "auto")
        if current != "auto" and current != value:
            raise WsdmError(f'{path}: {key} is {current} but this run needs {value}; set it to "auto"')
        config[key] = value
    for key in ("bf16", "bfloat16"):
        if isinstance(config.get(key), dict) and config[key].get("enabled") == "auto":
            config[key]["enabled"] = bf16
    if isinstance(config.get("fp16"), dict) and config["fp16"].get("enabled") == "auto":
        config["fp16"]["enabled"] = False
    config["zero_allow_untested_optimizer"] = True
    return config


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


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
            parts = run.loss_fn(backend, batch)
            backend.backward(parts.total, boundary)
            window["loss"] += float(parts.total.detach())
            window["ce"] += float(parts.ce)
            if parts.kl is not None:
                window["kl"] += float(parts.kl)
                window["cos"] += float(parts.cos)
            window["n"] += 1
            window["tokens"] += batch["n_tokens"]
            if not boundary:
                continue
            grad_norm = backend.step()
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
