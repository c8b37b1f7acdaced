"""The server's vllm engine: every request's prompts go straight into vLLM's running ``AsyncLLM``.

vLLM's engine core (its own process) schedules whatever is queued at each step, so prompts from
concurrent requests share steps (continuous batching) and the judge's system prompt stays in the
prefix cache. The settings are the offline engine's (``engines/vllm_plan.py``, ``engines/vllm_setup.py``):
the same GPU or CPU plan, the same engine arguments and the same ``SamplingParams`` (one token restricted to A/B, both letters'
processed log-probabilities), read by the same ``letter_logprobs``. The scheduler gets the offline
engine's defaults too (vLLM sizes its steps by a usage context; the server asks for ``LLM``'s).

This module is the thin part that needs vLLM; ``tools/bench_serve.py`` checks it against offline
scoring on a GPU, and tests/test_vllm_cpu.py runs it (the server with concurrent clients and a
SIGTERM drain) on vLLM's CPU build.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..models.folder import ModelFolder
from .asynchronous import AsyncScoringEngine, EngineStopped
from .orphans import ChildGuard, descendants
from .settings import EngineSettings
from .vllm_plan import VLLMPlan, launch_of, plan_engine, vllm_device
from .vllm_setup import check_prompt_lengths, letter_logprobs, scoring_setup

log = logging.getLogger(__name__)


class VLLMAsyncEngine(AsyncScoringEngine):
    name = "vllm"

    def __init__(
        self,
        model: ModelFolder | Path,
        letter_ids: tuple[int, int],
        longest_prompt: int,
        settings: EngineSettings,
        *,
        extra_args: dict | None = None,
    ) -> None:
        """``extra_args`` (benchmarks, experiments) are engine arguments that win over ours."""
        super().__init__()
        self.model = ModelFolder.of(model)
        self.letter_ids = tuple(letter_ids)
        self.longest_prompt = longest_prompt
        self.settings = settings
        self.extra_args = extra_args
        self.plan: VLLMPlan | None = None
        self.llm = None
        self.sampling = None
        self._guard: ChildGuard | None = None

    async def start(self) -> None:
        # Planning asks a child process about the GPUs, and AsyncLLM's constructor waits for its
        # engine process to load the model: both block, so they run off the event loop. The engine's
        # output handler starts on the loop with the first request.
        await asyncio.to_thread(self._start)

    def _start(self) -> None:
        settings = self.settings
        if settings.engines is None and vllm_device(settings) == "cpu":
            # A server runs one engine: on CPUs it takes every core (as tensor-parallel ranks).
            settings = replace(settings, engines=1)
        plan = plan_engine(self.model, self.longest_prompt, settings)
        if plan.data_parallel > 1:
            log.warning(
                "the plan has %d engines; a server runs one, on %s: start one server per engine "
                "(--gpus or --cpus, --port) to use the others",
                plan.data_parallel,
                plan.labels[0],
            )
        # Before vLLM starts: the engine's GPUs (nothing in this process has touched CUDA yet, GPUs
        # are counted by a child process) or its cores' binding.
        os.environ.update(plan.environments[0])
        launch = launch_of(
            plan, self.model, self.letter_ids, settings, {**plan.precision_args, **(self.extra_args or {})}
        )
        kwargs, sampling = scoring_setup(launch)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        # vllm.LLM turns its own stats logging off; the one stat logger here reports batch sizes.
        args = AsyncEngineArgs(**{"disable_log_stats": True, **kwargs})
        before = descendants()
        try:
            self.llm = AsyncLLM.from_engine_args(
                args, usage_context=UsageContext.LLM_CLASS, stat_loggers=[self._batch_logger()]
            )
        except Exception as exc:  # noqa: BLE001 - start-up failures (memory, kernels) become one line
            log.debug("vLLM start-up failed", exc_info=True)
            raise launch.start_failure(exc) from exc
        # vLLM's engine core does not watch this process: if it is killed, the guard ends them.
        self._guard = ChildGuard.around(before)
        self.plan, self.sampling = plan, sampling

    def _batch_logger(self):
        """A vLLM stat logger that reports the requests of each engine step as a batch."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        engine = self

        class BatchSizes(StatLoggerBase):
            def __init__(self, vllm_config, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
                # A one-token request finishes in the step that completes its prefill, so the step held
                # the requests still running after it and those that finished in it.
                running = getattr(scheduler_stats, "num_running_reqs", 0) if scheduler_stats else 0
                finished = len(getattr(iteration_stats, "finished_requests", None) or ())
                tokens = getattr(getattr(iteration_stats, "prompt_token_stats", None), "computed", 0)
                if running or finished:
                    engine.observer.batch(int(running) + finished, int(tokens or 0))

            def log_engine_initialized(self) -> None:
                pass

        return BatchSizes

    @property
    def max_prompt_tokens(self) -> int | None:
        return None if self.plan is None else self.plan.max_model_len - 1

    def healthy(self) -> bool:
        return self.llm is None or not self.llm.errored

    async def score(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        if self.llm is None or self.plan is None:
            raise EngineStopped("the engine is not running")
        check_prompt_lengths(sequences, self.plan.max_model_len)
        base = uuid.uuid4().hex
        tasks = [
            asyncio.ensure_future(self._one(f"wsdm-{base}-{index}", sequence))
            for index, sequence in enumerate(sequences)
        ]
        try:
            outputs = await asyncio.gather(*tasks)
        except BaseException:
            # Cancelled (the client went away) or one prompt failed: abort the rest. Each generate()
            # aborts its own request in vLLM when it is cancelled.
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if pending:
                self.observer.aborted(len(pending))
            raise
        return letter_logprobs(outputs, self.letter_ids)

    async def _one(self, request_id: str, sequence: Sequence[int]):
        final = None
        async for output in self.llm.generate(
            {"prompt_token_ids": list(sequence)}, self.sampling, request_id
        ):
            final = output
        return final

    async def reset_prefix_cache(self) -> None:
        """For benchmarks: the next pass starts cold."""
        await self.llm.reset_prefix_cache()

    def describe(self) -> str:
        return "vllm" if self.plan is None else f"vllm (async): {self.plan.describe()}"

    def info(self) -> dict:
        return {} if self.plan is None else self.plan.info()

    async def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is None:
            return
        # The output handler first: stopped after the engine process, it would log the engine's
        # end as an error.
        handler = getattr(llm, "output_handler", None)
        if handler is not None:
            handler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await handler
        await asyncio.to_thread(llm.shutdown)
        if self._guard is not None:
            self._guard.close()
