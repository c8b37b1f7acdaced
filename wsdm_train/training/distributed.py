"""Where a training process sits (rank, world, device), the process group, and RNG state.

Filled from the variables torchrun or the deepspeed launcher set, so one code path serves one CPU
process, one GPU, DDP and DeepSpeed.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from wsdm_serve.errors import WsdmError


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
