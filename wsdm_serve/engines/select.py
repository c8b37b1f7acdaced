"""Choosing and constructing an engine from command-line options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import WsdmError
from .base import ScoringEngine

ENGINES = ("auto", "hf", "vllm")


@dataclass(frozen=True)
class EngineOptions:
    name: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    batch_tokens: int | None = None


def vllm_usable() -> bool:
    """vLLM is the default where it imports and a CUDA GPU is visible."""
    try:
        import torch
    except ImportError:
        return False
    if not torch.cuda.is_available():
        return False
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine_name(name: str) -> str:
    if name not in ENGINES:
        raise WsdmError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "auto":
        return "vllm" if vllm_usable() else "hf"
    return name


def create_engine(
    model_dir: Path,
    letter_ids: tuple[int, int],
    longest_prompt: int,
    options: EngineOptions,
    trust_remote_code: bool = False,
) -> ScoringEngine:
    name = resolve_engine_name(options.name)
    if name == "hf":
        from .hf import HFEngine

        return HFEngine(
            model_dir,
            letter_ids,
            device=options.device,
            dtype=options.dtype,
            batch_tokens=options.batch_tokens,
            trust_remote_code=trust_remote_code,
        )
    raise WsdmError("the vllm engine is not available in this build; use --engine hf")
