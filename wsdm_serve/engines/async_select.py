"""Which server engine runs a model: the async counterpart of :mod:`wsdm_serve.engines.select`.

Kept apart from :mod:`~wsdm_serve.engines.asynchronous` (the engine interface and the batching
wrapper) because it names the vLLM engine, which builds on that interface.
"""

from __future__ import annotations

from ..errors import WsdmError
from ..models.folder import ModelFolder
from .asynchronous import AsyncScoringEngine, BatchingEngine, BatchingOptions
from .select import create_engine, resolve_engine
from .settings import EngineSettings


def create_async_engine(
    model: ModelFolder,
    letter_ids: tuple[int, int],
    longest_prompt: int,
    settings: EngineSettings,
    batching: BatchingOptions | None = None,
) -> AsyncScoringEngine:
    """The server's engine for the settings predict takes (nothing is loaded until ``start``)."""
    batching = batching or BatchingOptions()
    if not settings.resolved:
        settings = resolve_engine(settings, model)
    if settings.name == "vllm":
        if batching.given():
            raise WsdmError(
                f"{', '.join(batching.given())}: only the hf engine takes this; the vllm engine "
                "batches continuously"
            )
        from .vllm_async import VLLMAsyncEngine

        return VLLMAsyncEngine(model, letter_ids, longest_prompt, settings)
    window_ms = BatchingOptions.DEFAULT_WINDOW_MS if batching.window_ms is None else batching.window_ms
    return BatchingEngine(
        lambda: create_engine(model, letter_ids, longest_prompt, settings),
        window_s=window_ms / 1000,
        max_tokens=batching.window_tokens,
    )
