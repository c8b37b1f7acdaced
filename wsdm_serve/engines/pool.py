"""Data parallel scoring: one engine per GPU group or per group of CPU cores, each in its own process.

Each worker is a fresh ``spawn`` process started with an environment of its own: a CUDA process sees
the GPUs named by CUDA_VISIBLE_DEVICES when CUDA starts, so a GPU group's worker is started with only
its GPUs named (the parent never touches CUDA); a CPU engine's worker gets the cores its threads are
bound to (VLLM_CPU_OMP_THREADS_BIND, read by vLLM's CPU build when the engine starts). Rows
are split so every engine gets about the same number of tokens, each engine reports progress per
chunk through a shared queue (so one progress bar covers all GPUs), and a worker that fails or dies
turns into one error line instead of a hang.

The pool knows nothing about vLLM: a worker builds its engine from an importable factory
(``"package.module:Callable"``) that returns an object with ``score(sequences, progress)`` and
``close()``, which is also how the pool is tested on a CPU with the transformers engine.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import WsdmError, one_line
from .base import ProgressCallback, ScoringEngine
from .gpu_plan import split_balanced

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class WorkerSpec:
    """How to build one group's engine: ``factory(**kwargs)`` in a process started with ``environment``."""

    factory: str
    kwargs: dict = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    """Variables set for the worker on top of the parent's (CUDA_VISIBLE_DEVICES, a CPU binding)."""
    label: str = "worker"


def pack(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token lists as one int32 array plus offsets: pickling 50M Python ints would take seconds."""
    lengths = np.fromiter((len(seq) for seq in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype=np.int32)
    for index, seq in enumerate(sequences):
        flat[offsets[index] : offsets[index + 1]] = seq
    return flat, offsets


def unpack(flat: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [flat[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def _build(factory: str, kwargs: dict):
    module_name, _, attribute = factory.partition(":")
    target = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target(**kwargs)


def _worker_main(spec: WorkerSpec, worker_id: int, tasks, results) -> None:
    """Entry point of a worker process: build the engine, then score tasks until told to stop."""
    os.environ.update(spec.environment)
    # Turn SIGTERM into an exception so `finally` closes the engine (and its own child processes).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        engine = _build(spec.factory, spec.kwargs)
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent as a message
        if not isinstance(exc, WsdmError):
            traceback.print_exc()
        results.put(("error", worker_id, one_line(exc)))
        return
    results.put(("ready", worker_id, None))
    parent = mp.parent_process()
    try:
        while True:
            try:
                task = tasks.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return
                continue
            if task is None:
                return
            job, flat, offsets = task

            def progress(rows: int, tokens: int, job: int = job) -> None:
                results.put(("progress", worker_id, (job, rows, tokens)))

            logits = engine.score(unpack(flat, offsets), progress)
            results.put(("result", worker_id, (job, np.asarray(logits, dtype=np.float32))))
    except BaseException as exc:  # noqa: BLE001
        if not isinstance(exc, (WsdmError, SystemExit)):
            traceback.print_exc()
        results.put(("error", worker_id, one_line(exc)))
    finally:
        with contextlib.suppress(Exception):
            engine.close()


@contextlib.contextmanager
def temporary_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set variables for the duration of the block, then restore them: a child process started
    inside (spawn copies the parent's environment, vLLM's workers too) keeps them."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class EnginePool(ScoringEngine):
    """Scores with one worker engine per spec; rows are split by token count."""

    def __init__(self, specs: Sequence[WorkerSpec], name: str = "pool") -> None:
        if not specs:
            raise ValueError("an engine pool needs at least one worker")
        self.name = name
        self._specs = list(specs)
        context = mp.get_context("spawn")
        self._results = context.Queue()
        self._tasks = []
        self._processes = []
        self._job = 0
        self._closed = False
        atexit.register(self.close)
        for worker_id, spec in enumerate(self._specs):
            tasks = context.Queue()
            process = context.Process(
                target=_worker_main,
                args=(spec, worker_id, tasks, self._results),
                name=f"wsdm-engine-{worker_id}",
                daemon=False,  # an engine may start processes of its own (vLLM does)
            )
            with temporary_environment(spec.environment):
                process.start()
            self._tasks.append(tasks)
            self._processes.append(process)
        try:
            waiting = set(range(len(self._specs)))
            while waiting:
                kind, worker_id, payload = self._next_message(waiting)
                if kind == "error":
                    raise WsdmError(f"{self._specs[worker_id].label}: {payload}")
                if kind == "ready":
                    waiting.discard(worker_id)
        except BaseException:
            self.close()
            raise

    @property
    def workers(self) -> int:
        return len(self._specs)

    def _next_message(self, expected: set[int]):
        """The next message from any worker; a worker we wait for that died without one is an error."""
        while True:
            try:
                return self._results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                pass
            for worker_id in expected:
                process = self._processes[worker_id]
                if not process.is_alive():
                    try:  # its last words may still be in the pipe
                        return self._results.get(timeout=2.0)
                    except queue.Empty:
                        raise WsdmError(
                            f"{self._specs[worker_id].label}: engine process exited unexpectedly "
                            f"(exit code {process.exitcode})"
                        ) from None

    def score(
        self, sequences: Sequence[Sequence[int]], progress: ProgressCallback | None = None
    ) -> np.ndarray:
        if self._closed:
            raise WsdmError("the engine pool is closed")
        self._job += 1
        job = self._job
        result = np.zeros((len(sequences), 2), dtype=np.float32)
        parts = split_balanced([len(seq) for seq in sequences], len(self._specs))
        pending: set[int] = set()
        for worker_id, part in enumerate(parts):
            if part:
                flat, offsets = pack([sequences[i] for i in part])
                self._tasks[worker_id].put((job, flat, offsets))
                pending.add(worker_id)
        try:
            while pending:
                kind, worker_id, payload = self._next_message(pending)
                if kind == "error":
                    raise WsdmError(f"{self._specs[worker_id].label}: {payload}")
                if kind == "progress" and payload[0] == job and progress is not None:
                    progress(payload[1], payload[2])
                elif kind == "result" and payload[0] == job:
                    result[parts[worker_id]] = payload[1]
                    pending.discard(worker_id)
        except BaseException:
            self.close()
            raise
        return result

    def close(self) -> None:
        """Ask every worker to stop, then terminate the ones that do not within a minute."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for tasks, process in zip(self._tasks, self._processes, strict=True):
            if process.is_alive():
                with contextlib.suppress(Exception):
                    tasks.put(None)
        for process in self._processes:
            process.join(timeout=60)
            if process.is_alive():
                log.warning("engine process %s did not stop; terminating it", process.name)
                process.terminate()
                process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        for tasks in self._tasks:
            with contextlib.suppress(Exception):
                tasks.cancel_join_thread()  # a dead worker never drains its queue: do not wait on it
                tasks.close()
        with contextlib.suppress(Exception):
            self._results.close()
