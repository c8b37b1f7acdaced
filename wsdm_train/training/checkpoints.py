"""What a training run leaves on disk: adapters swapped in whole, the resumable state, the metrics log.

``best/`` and ``final/`` are PEFT adapters (``adapter_model.safetensors`` + ``adapter_config.json``)
with a ``wsdm_checkpoint.json`` that says which step and dev score they are; ``last/`` holds what a
resumed run needs. A folder is written under a temporary name and swapped into place, so a crash
leaves the previous complete one (or, between the two renames, ``last.old``, which resume finds).
``metrics.jsonl`` gets one JSON object per event; a ``train`` event reports the losses that
:class:`LossWindow` summed since the one before.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wsdm_serve.errors import WsdmError

from .modeling import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LossParts

STATE_FILE = "trainer_state.json"
CHECKPOINT_INFO = "wsdm_checkpoint.json"


def save_adapter(peft_model, state: dict[str, torch.Tensor], directory: Path, info: dict) -> None:
    """PEFT ``save_pretrained`` (adapter_model.safetensors + adapter_config.json), swapped in whole."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
    for required in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        if not (tmp / required).exists():
            raise WsdmError(f"{tmp}: PEFT did not write {required}")
    (tmp / CHECKPOINT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    swap_dir(tmp, directory)


def swap_dir(new: Path, target: Path) -> None:
    """Put the folder ``new`` in the place of ``target``; the old one is removed afterwards."""
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


def read_state(last: Path) -> dict:
    """``{"state": ..., "plan": ...}`` as the run that saved ``last`` wrote it."""
    return json.loads((last / STATE_FILE).read_text())


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


@dataclass
class LossWindow:
    """The micro-batch losses summed since the last ``train`` record of the metrics log."""

    loss: float = 0.0
    ce: float = 0.0
    kl: float = 0.0
    cos: float = 0.0
    n: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.time)

    def add(self, parts: LossParts, loss: float, tokens: int) -> None:
        self.loss += loss
        self.ce += float(parts.ce)
        if parts.kl is not None:
            self.kl += float(parts.kl)
            self.cos += float(parts.cos)
        self.n += 1
        self.tokens += tokens

    def record(self, lr: float, grad_norm: float | None, world_size: int, device: str) -> dict:
        n = max(self.n, 1)
        record = {
            "loss": self.loss / n,
            "ce": self.ce / n,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": self.tokens * world_size / max(time.time() - self.started, 1e-9),
        }
        if device.startswith("cuda"):
            record["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if self.kl:
            record.update(kl=self.kl / n, cos=self.cos / n)
        return record
