"""Which engine runs a model here, decided once, and building it.

:func:`resolve_engine` is the one place where the engine and its precision are decided and where
every refusal of an option mix lives; everything after it (the engines, the work folders, the
server) takes the resolved :class:`EngineSettings` as they are.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ..errors import WsdmError
from ..models.folder import ModelFolder
from .base import ScoringEngine
from .settings import ENGINES, EngineSettings

log = logging.getLogger(__name__)


def vllm_usable_on_gpus() -> bool:
    """vLLM's CUDA build is installed, imports, and a CUDA GPU is visible.

    GPUs are counted by a child process: asking CUDA here would fix this process's visible devices
    before the vllm engine has chosen its GPUs.
    """
    from .gpu_plan import detect_gpus
    from .vllm_setup import vllm_build

    if vllm_build() != "cuda" or not detect_gpus():
        return False
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install must not stop the hf fallback
        log.warning("vLLM is installed but does not import (%s); using the hf engine", exc)
        return False
    return True


def resolve_engine(settings: EngineSettings, model: ModelFolder | None = None) -> EngineSettings:
    """The settings with ``name`` decided (``hf`` or ``vllm``) and, for vllm, its ``device`` (``cuda``
    or ``cpu``), after every check of the options.

    Runs before any work is done (tokenizing 25k rows first and failing afterwards would waste
    minutes). With ``model``, what the checkpoint cannot run as is refused too (a precision, or on
    CPUs what vLLM's CPU build lacks: see :mod:`.cpu_plan`). Checking settings again is cheap (only
    ``auto`` looks for GPUs, once per process), but the callers resolve once and hand the result on.
    """
    from ..models.precision import check_model_precision, check_precision_name, fp8_hf_error

    if settings.name not in ENGINES:
        raise WsdmError(f"unknown engine {settings.name!r}; choose one of {', '.join(ENGINES)}")
    check_precision_name(settings.precision)
    if model is not None and settings.precision != "checkpoint" and model.has_config:
        check_model_precision(model.path, model.config, settings.precision)
    if settings.name == "hf" and settings.vllm_only():
        raise WsdmError(
            f"{', '.join(settings.vllm_only())}: only the vllm engine takes this; drop it or use --engine vllm"
        )
    if settings.name == "vllm" and settings.hf_only():
        raise WsdmError(
            f"{', '.join(settings.hf_only())}: only the hf engine takes this; "
            "the vllm engine chooses GPUs with --gpus"
        )
    if settings.name == "hf":
        if settings.precision == "fp8":
            raise fp8_hf_error()
        return settings
    if settings.name == "vllm":
        return vllm_settings(settings, model)
    return automatic_engine(settings, model)


def vllm_settings(settings: EngineSettings, model: ModelFolder | None) -> EngineSettings:
    """The vllm engine's settings with its device decided and checked: options of the other device
    are refused, and on CPUs the CPU plan must accept the model (with ``model``)."""
    from .cpu_plan import FP8_ON_CPUS
    from .vllm_plan import cpu_layout, vllm_device

    device = vllm_device(settings)
    settings = replace(settings, name="vllm", device=device)
    if device == "cuda":
        if settings.cpu_only():
            raise WsdmError(
                f"{', '.join(settings.cpu_only())}: only the vllm engine on CPUs (--device cpu) takes this"
            )
        return settings
    if settings.gpu_only():
        raise WsdmError(
            f"{', '.join(settings.gpu_only())}: the vllm engine on CPUs takes --cpus and --kv-cache-gib instead"
        )
    if settings.precision == "fp8":
        raise WsdmError(FP8_ON_CPUS)
    if model is not None and model.has_config:
        cpu_layout(model, settings, longest_prompt=1)  # the model and the options, before any work
    return settings


def automatic_engine(settings: EngineSettings, model: ModelFolder | None) -> EngineSettings:
    """``--engine auto``: vllm where it runs, else hf.

    vllm runs on GPUs where its CUDA build imports and a GPU is visible; on CPUs where its CPU build
    is installed and the CPU plan accepts the model and the options (measured 1.28-1.74x the hf
    engine's tokens/s on 2 quiet cores, more on busy ones: docs/benchmarks.md); ``--device cpu``
    keeps it off GPUs, ``--batch-tokens`` or ``--device cuda:N`` (hf options) choose hf.
    """
    from ..models.precision import fp8_hf_error
    from .cpu_plan import FP8_ON_CPUS
    from .vllm_setup import vllm_build

    fp8 = settings.precision == "fp8"
    if fp8 and settings.device == "cpu":
        raise WsdmError(FP8_ON_CPUS)
    if not settings.hf_only():
        if settings.device != "cpu" and vllm_usable_on_gpus():
            return vllm_settings(replace(settings, device="cuda"), model)
        if vllm_build() == "cpu" and settings.device in ("auto", "cpu") and model is not None:
            try:
                return vllm_settings(replace(settings, device="cpu"), model)
            except WsdmError as exc:
                log.warning("the vllm engine cannot run this on CPUs (%s); the hf engine runs", exc)
    if fp8:
        raise fp8_hf_error("no usable vLLM and CUDA GPU here")
    if settings.vllm_only():
        log.warning(
            "%s ignored: the vllm engine cannot run here, the hf engine runs", ", ".join(settings.vllm_only())
        )
    return replace(settings, name="hf")


def create_engine(
    model: ModelFolder, letter_ids: tuple[int, int], longest_prompt: int, settings: EngineSettings
) -> ScoringEngine:
    """The offline engine for ``settings``, sized for prompts of up to ``longest_prompt`` tokens.

    ``settings`` come from :func:`resolve_engine`; ``auto`` ones are resolved here.
    """
    model = ModelFolder.of(model)
    if not settings.resolved:
        settings = resolve_engine(settings, model)
    if settings.name == "hf":
        from .hf import HFEngine

        return HFEngine(model, letter_ids, settings)
    from .vllm import VLLMEngine

    return VLLMEngine(model, letter_ids, longest_prompt, settings)
