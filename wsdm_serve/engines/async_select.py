"""Which server engine runs a model: the async counterpart of :mod:`wsdm_serve.engines.select`.

Kept apart from :mod:`~wsdm_serve.engines.asynchronous` (the engine interface and the batching
wrapper) because it names the vLLM engine, which builds on that interface.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import WsdmError
from .asynchronous import AsyncScoringEngine, BatchingEngine, BatchingOptions
from .select import EngineOptions, choose_engine, create_engine


def create_async_engine(
    model_dir: Path,
    letter_ids: tuple[int, int],
    longest_prompt: int,
    options: EngineOptions,
    trust_remote_code: bool = False,
    batching: BatchingOptions | None = None,
) -> AsyncScoringEngine:
    """The server's engine for the options predict takes (nothing is loaded until ``start``)."""
    batching = batching or BatchingOptions()
    if choose_engine(options) == "vllm":
        if batching.given():
            raise WsdmError(
                f"{', '.join(batching.given())}: only the hf engine takes this; the vllm engine "
                "batches continuously"
            )
        from .vllm_async import VLLMAsyncEngine

        return VLLMAsyncEngine(model_dir, letter_ids, longest_prompt, options, trust_remote_code)
    window_ms = BatchingOptions.DEFAULT_WINDOW_MS if batching.window_ms is None else batching.window_ms
    return BatchingEngine(
        lambda: create_engine(model_dir, letter_ids, longest_prompt, options, trust_remote_code),
        window_s=window_ms / 1000,
        max_tokens=batching.window_tokens,
    )
