"""What the training loop needs from an optimizer engine: plain PyTorch (CPU, one GPU, DDP) or
DeepSpeed (ZeRO-2/3 from a JSON config whose ``auto`` values each run fills in).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from wsdm_serve.errors import WsdmError

from ..config import StageSettings
from .batches import BatchPlan
from .distributed import DistContext
from .modeling import LetterHead

DEEPSPEED_DIR = Path(__file__).parents[1] / "deepspeed"


class Backend:
    """What the loop needs from the engine: forward, backward, step, save and load of state."""

    module: torch.nn.Module
    stops_at = "before the update"  # where a non-finite gradient norm is caught

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()


class PlainBackend(Backend):
    """torch AdamW on one process, or under DDP when several processes run without DeepSpeed."""

    def __init__(
        self,
        head: LetterHead,
        optimizer,
        scheduler,
        settings: StageSettings,
        plan: BatchPlan,
        ctx: DistContext,
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

    def step(self, check_norm: Callable[[float | None], None]) -> float | None:
        """Clip, let ``check_norm`` see the gradient norm (it raises to stop), then update."""
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm))
        check_norm(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

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

    stops_at = "after the engine's update, before anything was saved"

    def __init__(
        self,
        head,
        optimizer,
        scheduler,
        settings: StageSettings,
        plan: BatchPlan,
        ctx: DistContext,
        config: dict,
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

    def step(self, check_norm: Callable[[float | None], None]) -> float | None:
        """The engine clips and updates in one call, so its norm is checked after the update; a
        non-finite one still stops the stage before anything is saved. ``None``: not reported."""
        self.module.step()
        norm = self.module.get_global_grad_norm()
        norm = float(norm) if norm is not None else None
        check_norm(norm)
        return norm

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


def deepspeed_config(path: Path, settings: StageSettings, plan: BatchPlan, bf16: bool) -> dict:
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


def make_optimizer(head: LetterHead, settings: StageSettings, device: str):
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


def make_scheduler(optimizer, settings: StageSettings, plan: BatchPlan):
    from transformers import get_scheduler

    return get_scheduler(
        settings.scheduler,
        optimizer=optimizer,
        num_warmup_steps=plan.warmup_steps,
        num_training_steps=plan.total_steps,
    )


def make_backend(
    head: LetterHead,
    settings: StageSettings,
    plan: BatchPlan,
    ctx: DistContext,
    deepspeed: Path | None,
    bf16: bool,
) -> Backend:
    """AdamW with the stage's schedule, in a plain engine or in DeepSpeed's (``deepspeed``: its config)."""
    optimizer = make_optimizer(head, settings, ctx.device)
    scheduler = make_scheduler(optimizer, settings, plan)
    if deepspeed is None:
        return PlainBackend(head, optimizer, scheduler, settings, plan, ctx)
    return DeepSpeedBackend(
        head, optimizer, scheduler, settings, plan, ctx, deepspeed_config(deepspeed, settings, plan, bf16)
    )
