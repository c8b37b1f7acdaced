"""Engines for a server: many small requests at once, scored together.

The offline engines (:class:`~wsdm_serve.engines.base.ScoringEngine`) get a whole table; a server
gets requests of a few pairs each from many clients at once. An :class:`AsyncScoringEngine` takes
one request's token-id sequences per call, from coroutines that run concurrently, and scores them
together with those of other requests:

- :class:`BatchingEngine` wraps an offline engine (the transformers one): requests that arrive
  within a short window, or until a token budget is queued, are scored in one call, on a worker
  thread so the event loop stays free.
- ``VLLMAsyncEngine`` (``engines/vllm_async.py``): every request's prompts go straight into vLLM's
  running ``AsyncLLM`` (continuous batching, prefix cache).

Both return the same raw letter logits as the offline engines, so the pipeline's softmax and TTA
code applies unchanged. Cancelling :meth:`AsyncScoringEngine.score` (the client went away) aborts
whatever of that request is still queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .base import ScoringEngine

log = logging.getLogger(__name__)


class EngineObserver:
    """What an engine reports as it works (the server's metrics subclass it); may be called from a
    worker thread."""

    def batch(self, sequences: int, tokens: int) -> None:
        """One engine batch (a forward pass; for vLLM, a scheduler step) of ``sequences`` prompts."""

    def aborted(self, sequences: int) -> None:
        """``sequences`` queued prompts were dropped unscored because their request was cancelled."""


class EngineStopped(RuntimeError):
    """The engine is not running (not started yet, or shutting down)."""


class AsyncScoringEngine(ABC):
    """Scores the prompts of one request per :meth:`score` call, batching concurrent calls."""

    name: str = "engine"

    def __init__(self) -> None:
        self.observer = EngineObserver()

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model; slow work runs off the event loop."""

    @abstractmethod
    async def score(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Float32 letter logits ``[len(sequences), 2]`` in input order; cancelling aborts what is queued."""

    @property
    def max_prompt_tokens(self) -> int | None:
        """The longest prompt the running engine takes, or None when there is no such limit."""
        return None

    def healthy(self) -> bool:
        """False once the engine has failed for good (a dead vLLM engine process)."""
        return True

    def describe(self) -> str:
        return self.name

    def info(self) -> dict:
        """Settings worth showing a client (``GET /v1/model``)."""
        return {}

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop and release the model; queued calls fail with :class:`EngineStopped`."""


@dataclass
class _Pending:
    sequences: Sequence[Sequence[int]]
    tokens: int
    future: asyncio.Future
    arrived: float


class BatchingEngine(AsyncScoringEngine):
    """Requests that arrive together scored in one call of an offline engine, on one worker thread.

    A batch is taken ``window_s`` after its oldest request arrived, or as soon as ``max_tokens``
    prompt tokens are queued, whichever comes first; it holds whole requests, oldest first, up to
    ``max_tokens`` (at least one request). While a batch is scored, new requests queue up, so under
    load each batch starts the moment the previous one ends. If a batch of several requests fails,
    each request is scored alone, so one request that breaks the engine fails only itself.
    """

    def __init__(
        self,
        build: Callable[[], ScoringEngine],
        *,
        window_s: float = 0.005,
        max_tokens: int | None = None,
        name: str = "hf",
    ) -> None:
        super().__init__()
        self.name = name
        self.window_s = window_s
        self.max_tokens = max_tokens
        self.engine: ScoringEngine | None = None
        self._build = build
        self._queue: deque[_Pending] = deque()
        self._queued_tokens = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        # One thread: the model is used by one batch at a time, and torch keeps its own threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsdm-score")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.engine = await loop.run_in_executor(self._executor, self._build)
        if self.max_tokens is None:
            self.max_tokens = int(getattr(self.engine, "batch_tokens", 8192))
        self._wakeup = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name="wsdm-batcher")

    async def score(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        if self._worker is None or self._worker.done() or self._wakeup is None:
            raise EngineStopped("the engine is not running")
        if not sequences:
            return np.zeros((0, 2), dtype=np.float32)
        loop = asyncio.get_running_loop()
        item = _Pending(sequences, sum(len(s) for s in sequences), loop.create_future(), loop.time())
        self._queue.append(item)
        self._queued_tokens += item.tokens
        self._wakeup.set()
        try:
            return await item.future
        except asyncio.CancelledError:
            if self._drop(item):
                self.observer.aborted(len(sequences))
            raise

    @property
    def pending(self) -> int:
        """Prompts waiting for a batch."""
        return sum(len(item.sequences) for item in self._queue)

    def _drop(self, item: _Pending) -> bool:
        try:
            self._queue.remove(item)
        except ValueError:
            return False  # already taken into a batch (or dropped there)
        self._queued_tokens -= item.tokens
        return True

    async def _run(self) -> None:
        assert self._wakeup is not None and self.max_tokens is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            while self._queue and self._queued_tokens < self.max_tokens:
                remaining = self._queue[0].arrived + self.window_s - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            batch = self._take()
            if batch:
                await self._score_batch(batch)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        tokens = 0
        while self._queue and (not batch or tokens + self._queue[0].tokens <= self.max_tokens):
            item = self._queue.popleft()
            self._queued_tokens -= item.tokens
            if item.future.done():  # cancelled; its coroutine has not run its handler yet
                self.observer.aborted(len(item.sequences))
                continue
            batch.append(item)
            tokens += item.tokens
        return batch

    async def _score_batch(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        sequences = [sequence for item in batch for sequence in item.sequences]
        try:
            logits = await loop.run_in_executor(self._executor, self._score, sequences)
        except Exception as exc:  # noqa: BLE001 - the error belongs to the requests, not the batcher
            if len(batch) == 1:
                _settle(batch[0], error=exc)
                return
            for item in batch:
                if item.future.done():
                    continue
                try:
                    alone = await loop.run_in_executor(self._executor, self._score, item.sequences)
                except Exception as error:  # noqa: BLE001
                    _settle(item, error=error)
                else:
                    _settle(item, alone)
            return
        offset = 0
        for item in batch:
            _settle(item, logits[offset : offset + len(item.sequences)])
            offset += len(item.sequences)

    def _score(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        assert self.engine is not None
        return self.engine.score(sequences, self.observer.batch)

    def describe(self) -> str:
        return self.engine.describe() if self.engine is not None else self.name

    def info(self) -> dict:
        engine = self.engine
        dtype = getattr(engine, "dtype", None)
        return {
            "precision": None if dtype is None else str(dtype).removeprefix("torch."),
            "device": getattr(engine, "device", None),
            "batch_tokens": getattr(engine, "batch_tokens", None),
            "batch_window_ms": round(self.window_s * 1000, 3),
            "batch_window_tokens": self.max_tokens,
        }

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        while self._queue:
            _settle(self._queue.popleft(), error=EngineStopped("the server is shutting down"))
        self._queued_tokens = 0
        engine, self.engine = self.engine, None
        if engine is not None:
            # After the batch that may still run on the worker thread, which is the same thread.
            await asyncio.get_running_loop().run_in_executor(self._executor, engine.close)
        self._executor.shutdown(wait=False, cancel_futures=True)


def _settle(item: _Pending, logits: np.ndarray | None = None, *, error: BaseException | None = None) -> None:
    if item.future.done():
        return
    if error is not None:
        item.future.set_exception(error)
    else:
        item.future.set_result(logits)


@dataclass(frozen=True)
class BatchingOptions:
    """The hf engine's request batching; None means the default."""

    window_ms: float | None = None
    window_tokens: int | None = None

    DEFAULT_WINDOW_MS = 5.0

    def given(self) -> list[str]:
        flags = {"--batch-window-ms": self.window_ms, "--batch-window-tokens": self.window_tokens}
        return [flag for flag, value in flags.items() if value is not None]
