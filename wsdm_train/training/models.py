"""The models a stage trains or scores: found (or built, for a tiny model), loaded, and given their LoRA.

A stage starts from the base model with a fresh LoRA, or with an earlier stage's adapter loaded
strictly (names, shapes and LoRA settings must match); the judge head reads the two answer letters.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from wsdm_serve.errors import WsdmError
from wsdm_serve.outputs import atomic_directory
from wsdm_serve.prompt import letter_token_ids
from wsdm_serve.tokenizer import load_tokenizer

from ..config import Config, ModelConfig, StudentConfig
from .distributed import DistContext, seed_everything
from .guards import configure_attention
from .modeling import LetterHead, attach_lora, gradient_checkpointing_active, load_base_model

TINY_SPEC = "wsdm_tiny_model.json"


def _field(spec: ModelConfig) -> str:
    """How the configuration names this model's entry (for error messages)."""
    return "student" if isinstance(spec, StudentConfig) else f"teachers.{spec.name}"


def ensure_model(spec: ModelConfig, config: Config, ctx: DistContext) -> Path:
    """The model folder; a ``build_tiny`` spec creates a random tiny Qwen2 there.

    A tiny model is rebuilt when its recorded spec differs from the configured one, so a changed
    ``build_tiny`` never trains on a stale model; a folder without that record is never touched.
    """
    path = config.model_path(spec)
    if spec.build_tiny is not None:
        wanted = {"spec": dataclasses.asdict(spec.build_tiny), "tokenizer": spec.tokenizer_dir}
        record = path / TINY_SPEC
        current = None
        if record.exists():
            try:
                current = json.loads(record.read_text())
            except ValueError:
                current = None
        fresh = not (path / "config.json").exists() or (record.exists() and current != wanted)
        if fresh:
            if ctx.is_main:
                from wsdm_serve.tiny import build_tiny_model

                if not Path(spec.tokenizer_dir).is_dir():
                    raise WsdmError(
                        f"{spec.tokenizer_dir}: tokenizer folder not found ({_field(spec)}.tokenizer)"
                    )
                with atomic_directory(path) as tmp:
                    build_tiny_model(tmp, spec.tokenizer_dir, **dataclasses.asdict(spec.build_tiny))
                    (tmp / TINY_SPEC).write_text(json.dumps(wanted, indent=1) + "\n")
            ctx.barrier()
        return path
    return require_model_folder(spec, config)


def require_model_folder(spec: ModelConfig, config: Config) -> Path:
    """The folder of a model that is not built here; missing, it is one line naming the field."""
    path = config.model_path(spec)
    if not (path / "config.json").is_file():
        hint = f"; download {spec.hf_id} there" if spec.hf_id else ""
        raise WsdmError(f"{path}: model folder not found ({_field(spec)}.model){hint}")
    return path


@dataclass
class LoadedModel:
    head: LetterHead
    pad_id: int
    letter_ids: tuple[int, int]
    bf16: bool


def load_for_training(
    spec: ModelConfig,
    config: Config,
    ctx: DistContext,
    init_adapter: Path | None,
    seed: int,
    trainable: bool = True,
) -> LoadedModel:
    model_dir = ensure_model(spec, config, ctx)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=spec.trust_remote_code)
    letters = letter_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise WsdmError(f"{model_dir}: tokenizer has neither a pad nor an eos token")
    seed_everything(seed)  # the LoRA initialisation is part of the run's reproducibility
    configure_attention(spec.sdpa_cudnn)
    settings = spec.load_settings()
    base = load_base_model(model_dir, settings, ctx.device, training=trainable)
    if base.config.pad_token_id is None:
        base.config.pad_token_id = pad_id
    model = attach_lora(base, config.lora, init_adapter, trainable=trainable)
    if trainable and settings.gradient_checkpointing and not gradient_checkpointing_active(model):
        raise WsdmError(f"{model_dir}: gradient checkpointing was requested but the model did not enable it")
    head = (
        LetterHead(model, letters).to(ctx.device) if not settings.load_in_4bit else LetterHead(model, letters)
    )
    bf16 = next(base.parameters()).dtype == torch.bfloat16 or settings.load_in_4bit
    return LoadedModel(head, int(pad_id), letters, bf16)


def release() -> None:
    """Free a finished run's model before the next one is loaded."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
