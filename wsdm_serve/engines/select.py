"""Choosing and constructing an engine from command-line options."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import WsdmError
from .base import ScoringEngine

log = logging.getLogger(__name__)

ENGINES = ("auto", "hf", "vllm")


@dataclass(frozen=True)
class EngineOptions:
    """Options of both engines; None means "the engine's default" so unused options can be detected."""

    name: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    batch_tokens: int | None = None
    # vllm engine only
    gpus: str | None = None
    tensor_parallel: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    enforce_eager: bool | None = None
    max_num_batched_tokens: int | None = None
    """Tokens per vLLM scheduler step (None: vLLM's choice, 16,384 on one H100/H200 for this load)."""
    load_format: str = "auto"
    """``dummy`` builds random weights from config.json (benchmarks); not a command-line option."""
    precision: str = "checkpoint"
    """``checkpoint``: what the folder holds; ``fp8``: FP8 tensor cores (vllm engine, see models.precision)."""

    def vllm_only(self) -> list[str]:
        given = {
            "--gpus": self.gpus,
            "--tensor-parallel": self.tensor_parallel,
            "--max-model-len": self.max_model_len,
            "--gpu-memory-utilization": self.gpu_memory_utilization,
            "--enforce-eager/--no-enforce-eager": self.enforce_eager,
            "--max-num-batched-tokens": self.max_num_batched_tokens,
        }
        return [flag for flag, value in given.items() if value is not None]

    def hf_only(self) -> list[str]:
        given = []
        if self.batch_tokens is not None:
            given.append("--batch-tokens")
        if self.device not in ("auto", "cuda"):
            given.append(f"--device {self.device}")
        return given


def vllm_usable() -> bool:
    """vLLM is the default where it imports and a CUDA GPU is visible.

    GPUs are counted by a child process: asking CUDA here would fix this process's visible devices
    before the vllm engine has chosen its GPUs.
    """
    from .gpu_plan import detect_gpus
    from .vllm_setup import vllm_installed

    if not vllm_installed() or not detect_gpus():
        return False
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install must not stop the hf fallback
        log.warning("vLLM is installed but does not import (%s); using the hf engine", exc)
        return False
    return True


def chosen_engine(options: EngineOptions) -> str:
    """The engine ``create_engine`` builds for these options here: ``hf`` or ``vllm`` (a work folder
    records it before any engine starts, so a resume on another machine cannot mix engines)."""
    # --device cpu or --batch-tokens only mean something to the hf engine, so auto takes them as a choice.
    return "hf" if options.name == "auto" and options.hf_only() else resolve_engine_name(options.name)


def resolve_engine_name(name: str) -> str:
    if name not in ENGINES:
        raise WsdmError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "auto":
        return "vllm" if vllm_usable() else "hf"
    return name


def check_options(options: EngineOptions, model_dir: Path | None = None) -> None:
    """Refuse option mixes and a missing vLLM before any work is done (tokenizing 25k rows first
    and failing afterwards would waste minutes); with ``model_dir``, also a precision the
    checkpoint cannot run in."""
    from ..models.precision import check_model_precision, check_precision_name, fp8_hf_error

    if options.name not in ENGINES:
        raise WsdmError(f"unknown engine {options.name!r}; choose one of {', '.join(ENGINES)}")
    check_precision_name(options.precision)
    if options.precision == "fp8" and (
        options.name == "hf" or (options.name == "auto" and options.hf_only())
    ):
        raise fp8_hf_error()
    if (
        model_dir is not None
        and options.precision != "checkpoint"
        and (Path(model_dir) / "config.json").is_file()
    ):
        from ..models.shape import read_model_config

        check_model_precision(model_dir, read_model_config(model_dir), options.precision)
    if options.precision == "fp8" and options.name == "auto" and not vllm_usable():
        raise fp8_hf_error("no usable vLLM and CUDA GPU here")
    if options.name == "hf" and options.vllm_only():
        raise WsdmError(
            f"{', '.join(options.vllm_only())}: only the vllm engine takes this; drop it or use --engine vllm"
        )
    if options.name == "vllm":
        if options.hf_only():
            raise WsdmError(
                f"{', '.join(options.hf_only())}: only the hf engine takes this; "
                "the vllm engine chooses GPUs with --gpus"
            )
        from .vllm_setup import VLLM_MISSING, vllm_installed

        if not vllm_installed():
            raise WsdmError(VLLM_MISSING)


def choose_engine(options: EngineOptions) -> str:
    """``hf`` or ``vllm``, after the checks of :func:`check_options`."""
    check_options(options)
    name = chosen_engine(options)
    if name == "hf" and options.precision == "fp8":
        from ..models.precision import fp8_hf_error

        raise fp8_hf_error()
    return name


def create_engine(
    model_dir: Path,
    letter_ids: tuple[int, int],
    longest_prompt: int,
    options: EngineOptions,
    trust_remote_code: bool = False,
) -> ScoringEngine:
    name = choose_engine(options)
    if name == "hf":
        if options.vllm_only():
            log.warning(
                "%s ignored: no usable vLLM and GPU here, the hf engine runs", ", ".join(options.vllm_only())
            )
        from .hf import HFEngine

        return HFEngine(
            model_dir,
            letter_ids,
            device=options.device,
            dtype=options.dtype,
            batch_tokens=options.batch_tokens,
            trust_remote_code=trust_remote_code,
        )
    from .vllm import VLLMEngine

    return VLLMEngine(
        model_dir,
        letter_ids,
        longest_prompt,
        gpus=options.gpus,
        tensor_parallel=options.tensor_parallel,
        dtype=options.dtype,
        max_model_len=options.max_model_len,
        gpu_memory_utilization=options.gpu_memory_utilization,
        enforce_eager=options.enforce_eager,
        trust_remote_code=trust_remote_code,
        load_format=options.load_format,
        max_num_batched_tokens=options.max_num_batched_tokens,
        precision=options.precision,
    )
