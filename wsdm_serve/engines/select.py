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


def resolve_engine(settings: EngineSettings, model: ModelFolder | None = None) -> EngineSettings:
    """The settings with ``name`` decided (``hf`` or ``vllm``), after every check of the options.

    Runs before any work is done (tokenizing 25k rows first and failing afterwards would waste
    minutes). With ``model``, a precision the checkpoint cannot run in is refused too. Checking
    settings again is cheap (only ``auto`` looks for GPUs, once per process), but the callers
    resolve once and hand the result on.
    """
    from ..models.precision import check_model_precision, check_precision_name, fp8_hf_error

    if settings.name not in ENGINES:
        raise WsdmError(f"unknown engine {settings.name!r}; choose one of {', '.join(ENGINES)}")
    check_precision_name(settings.precision)
    fp8 = settings.precision == "fp8"
    # --device cpu or --batch-tokens only mean something to the hf engine, so auto takes them as a choice.
    hf_chosen = settings.name == "hf" or (settings.name == "auto" and bool(settings.hf_only()))
    if fp8 and hf_chosen:
        raise fp8_hf_error()
    if model is not None and settings.precision != "checkpoint" and model.has_config:
        check_model_precision(model.path, model.config, settings.precision)
    if settings.name == "hf" and settings.vllm_only():
        raise WsdmError(
            f"{', '.join(settings.vllm_only())}: only the vllm engine takes this; drop it or use --engine vllm"
        )
    if settings.name == "vllm":
        if settings.hf_only():
            raise WsdmError(
                f"{', '.join(settings.hf_only())}: only the hf engine takes this; "
                "the vllm engine chooses GPUs with --gpus"
            )
        from .vllm_setup import VLLM_MISSING, vllm_installed

        if not vllm_installed():
            raise WsdmError(VLLM_MISSING)
    name = settings.name
    if name == "auto":
        name = "hf" if hf_chosen or not vllm_usable() else "vllm"
        if name == "hf" and fp8:
            raise fp8_hf_error("no usable vLLM and CUDA GPU here")
        if name == "hf" and settings.vllm_only():
            log.warning(
                "%s ignored: no usable vLLM and GPU here, the hf engine runs", ", ".join(settings.vllm_only())
            )
    return replace(settings, name=name)


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
