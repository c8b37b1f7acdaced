"""What the service does with a judge request, apart from HTTP: admission to the bounded queue,
rows and prompts exactly as predict makes them, scoring on the engine, probabilities and swap TTA.

Every step is the package's own: rows are normalised by ``data``/``textnorm``, prompts are built
(truncation, template, token ids) by the :class:`~wsdm_serve.judge.Judge` that predict uses, the
engine returns raw letter logits, and ``tta`` turns them into probabilities.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..compare import GroupRewards
from ..data import arena_rows_from_records
from ..engines.asynchronous import AsyncScoringEngine, EngineStopped
from ..errors import one_line
from ..judge import Judge
from ..rewards.batch import GroupBatch
from ..tta import combine_swapped, softmax2, winners
from .config import ServeConfig
from .metrics import ServerMetrics
from .schema import ApiError, JudgeRequest

log = logging.getLogger(__name__)

RATE_WINDOW_S = 30.0
LOADING_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Scored:
    """Probabilities of pairs in request order: forward, swapped (None without swap), after TTA."""

    ids: list
    forward: np.ndarray
    swapped: np.ndarray | None
    probs: np.ndarray
    tokens: int


class JudgeService:
    """The checked model's tokenizer and prompt building, the engine, the queue bound and metrics."""

    def __init__(self, config: ServeConfig, engine: AsyncScoringEngine, judge: Judge) -> None:
        self.config = config
        self.engine = engine
        self.judge = judge
        self.metrics = ServerMetrics()
        self.metrics.queue_limit.set(config.max_queued_pairs)
        engine.observer = self.metrics
        self.state = "loading"
        self.error: str | None = None
        self.queued_pairs = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._done: deque[tuple[float, int]] = deque()  # (time, pairs) of recent answers: the rate
        # Prompt building (tokenizer, chat template) on one thread: the event loop stays free, and
        # the tokenizer is never used by two threads at once.
        self._prompts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsdm-prompts")
        # The Bradley-Terry fits of group rewards (~5 ms a group) off the event loop too.
        self._fits = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsdm-rewards")

    @classmethod
    def prepare(
        cls,
        config: ServeConfig,
        make_engine: Callable[[tuple[int, int], int], AsyncScoringEngine] | None = None,
    ) -> JudgeService:
        """Check the model folder, load its tokenizer and decide the engine (seconds); the engine
        is made, not started. It is sized for any prompt truncation lets through.

        ``make_engine(letter_ids, longest_prompt)``, when given, makes the engine instead of the
        settings (tests wrap the transformers engine; the benchmark keeps a handle on vLLM's).
        """
        from dataclasses import replace

        from ..engines.async_select import create_async_engine

        judge = Judge(replace(config.judge, tta="none", progress=False))
        if make_engine is not None:
            return cls(config, make_engine(judge.letters, judge.longest_prompt), judge)
        engine = create_async_engine(
            judge.folder, judge.letters, judge.longest_prompt, judge.settings.engine, config.batching
        )
        return cls(config, engine, judge)

    # ------------------------------------------------------------------ life cycle
    async def load(self) -> None:
        """Start the engine; the state says loading, ready or failed."""
        self.loop = asyncio.get_running_loop()  # the server's loop: where engine coroutines run
        try:
            await self.engine.start()
        except Exception as exc:
            self.state, self.error = "failed", one_line(exc)
            raise
        self.state = "ready"
        self.metrics.ready.set(1)
        log.warning("serve: engine ready: %s", self.engine.describe())

    def ready(self) -> bool:
        healthy = self.state == "ready" and self.engine.healthy()
        self.metrics.ready.set(1 if healthy else 0)
        return healthy

    async def close(self) -> None:
        await self.engine.close()
        self._prompts.shutdown(wait=False, cancel_futures=True)
        self._fits.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ admission
    def admit(self, pairs: int) -> None:
        """Take ``pairs`` into the bounded queue, or refuse with 429 and when to retry."""
        if not self.ready():
            if self.state == "loading":
                raise ApiError(
                    503,
                    "the engine is loading; retry shortly",
                    headers={"Retry-After": str(LOADING_RETRY_AFTER_S)},
                )
            raise ApiError(503, f"the engine is not available ({self.error or 'it stopped'})")
        limit = self.config.max_queued_pairs
        if self.queued_pairs + pairs > limit:
            wait = self.retry_after(self.queued_pairs + pairs - limit)
            raise ApiError(
                429,
                f"busy: {self.queued_pairs} pairs queued and {pairs} more asked for, the limit is {limit} "
                f"(--max-queued-pairs); retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        self.queued_pairs += pairs
        self.metrics.queued_pairs.set(self.queued_pairs)

    def release(self, pairs: int, answered: bool) -> None:
        self.queued_pairs -= pairs
        self.metrics.queued_pairs.set(self.queued_pairs)
        if answered:
            self._done.append((time.monotonic(), pairs))

    def retry_after(self, excess_pairs: int) -> int:
        """Seconds until ``excess_pairs`` more pairs are likely answered, at the recent rate (1..60)."""
        now = time.monotonic()
        while self._done and self._done[0][0] < now - RATE_WINDOW_S:
            self._done.popleft()
        if not self._done:
            return 1
        span = max(now - self._done[0][0], 1.0)
        rate = sum(pairs for _, pairs in self._done) / span
        return max(1, min(60, math.ceil(excess_pairs / rate)))

    # ------------------------------------------------------------------ judging
    async def score_records(
        self, records: list[dict], normalization: str, swap: bool, name: Callable[[int], tuple[str, dict]]
    ) -> Scored:
        """P(A), P(B) of pairs (mappings with the three texts, checked), as predict computes them:
        the forward prompts and, with ``swap``, the swapped ones in ONE engine submission, so
        concurrent requests share the engine's batches. ``name(pair)`` says where a pair came
        from (its message prefix and error location) for a prompt too long for the engine."""
        rows = arena_rows_from_records(records, normalization)
        loop = asyncio.get_running_loop()
        prompts = await loop.run_in_executor(self._prompts, self.judge.prompts, rows, swap)
        n = len(rows)
        sequences = prompts.token_ids + (prompts.swapped_token_ids if swap else [])
        self.check_lengths(sequences, n, name)
        try:
            logits = await self.engine.score(sequences)
        except EngineStopped as exc:
            raise ApiError(503, f"{exc}; retry shortly", headers={"Retry-After": "1"}) from None
        except Exception as exc:
            self.metrics.engine_errors.inc()
            log.error(
                "engine error on a request of %d pairs: %s", n, exc, exc_info=log.isEnabledFor(logging.DEBUG)
            )
            raise ApiError(500, f"engine error: {type(exc).__name__}: {one_line(exc)}") from None
        forward = softmax2(logits[:n])
        swapped = softmax2(logits[n:]) if swap else None
        probs = forward if swapped is None else combine_swapped(forward, swapped, np.arange(n))
        tokens = sum(len(sequence) for sequence in sequences)
        self.metrics.pairs.inc(n)
        self.metrics.tokens.inc(tokens)
        return Scored(list(rows.ids), forward, swapped, probs, tokens)

    async def judge_pairs(self, request: JudgeRequest) -> dict:
        """Probabilities of every pair, in request order (the caller has admitted the pairs)."""
        normalization = request.text_normalization or self.config.judge.text_normalization
        scored = await self.score_records(
            [pair.model_dump() for pair in request.pairs],
            normalization,
            request.swap == "all",
            lambda index: (f"pairs[{index}]", {"pair": index}),
        )
        results = []
        for index, (pair_id, winner) in enumerate(zip(scored.ids, winners(scored.probs), strict=True)):
            result = {
                "id": pair_id,
                "p_a": float(scored.probs[index, 0]),
                "p_b": float(scored.probs[index, 1]),
                "winner": winner,
            }
            if scored.swapped is not None:
                # In the swapped prompt response_a sits in slot B: its probability is the B column.
                result["p_a_forward"] = float(scored.forward[index, 0])
                result["p_a_swapped"] = float(scored.swapped[index, 1])
            results.append(result)
        return {"results": results, "usage": {"pairs": len(results), "tokens": scored.tokens}}

    async def score_groups(
        self, batch: GroupBatch, normalization: str | None
    ) -> tuple[list[GroupRewards], int]:
        """Each group's rewards (see :mod:`wsdm_serve.rewards.batch`) and the tokens scored: every
        pair of every group in one engine submission, both orders."""
        if not batch.pairs:  # groups of one response under round-robin or circular
            return batch.rewards(np.zeros(0)), 0

        def name(index: int) -> tuple[str, dict]:
            group, first = batch.source(index, 0)
            return f"{first} against {batch.source(index, 1)[1]}", {"group": group}

        scored = await self.score_records(
            batch.pairs, normalization or self.config.judge.text_normalization, True, name
        )
        rewards = await asyncio.get_running_loop().run_in_executor(
            self._fits, batch.rewards, scored.probs[:, 0]
        )
        self.metrics.groups.inc(len(batch))
        return rewards, scored.tokens

    def check_lengths(
        self, sequences: list[list[int]], n: int, name: Callable[[int], tuple[str, dict]]
    ) -> None:
        limit = self.engine.max_prompt_tokens
        if limit is None:
            return
        for position, sequence in enumerate(sequences):
            if len(sequence) > limit:
                index = position % n
                which = "swapped prompt" if position >= n else "prompt"
                where, location = name(index)
                raise ApiError(
                    422,
                    f"{where}: its {which} has {len(sequence)} tokens, more than this server's engine "
                    f"takes ({limit}; see --token-budget and --max-model-len)",
                    **location,
                )

    def model_info(self) -> dict:
        truncation = self.config.judge.truncation
        letters = self.judge.letters
        return {
            "model": str(self.config.judge.model),
            "state": self.state,
            "engine": self.engine.name,
            "engine_description": self.engine.describe(),
            **self.engine.info(),
            "truncation": {
                "token_budget": truncation.token_budget,
                "response_word_cap": truncation.response_word_cap,
                "query_word_cap": truncation.query_word_cap,
                "query_token_cap": truncation.query_token_cap,
            },
            "text_normalization": self.config.judge.text_normalization,
            "letter_ids": {"A": letters[0], "B": letters[1]},
            "max_prompt_tokens": self.engine.max_prompt_tokens,
            "limits": {
                "max_pairs_per_request": self.config.max_pairs_per_request,
                "max_queued_pairs": self.config.max_queued_pairs,
                "max_body_bytes": self.config.max_body_bytes,
            },
        }
