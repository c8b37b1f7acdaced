"""Real servers for the server tests: uvicorn on a free loopback port, the tiny model, and an engine
a test can hold (gate), break (poison) or watch (scored prompts).

Every server is stopped by the fixture or context manager that started it, and every request has
a timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import console_script
from wsdm_serve.engines.asynchronous import BatchingEngine
from wsdm_serve.engines.base import ScoringEngine
from wsdm_serve.engines.hf import HFEngine
from wsdm_serve.engines.settings import EngineSettings
from wsdm_serve.server.config import ServeConfig
from wsdm_serve.server.runner import JudgeServer, bind_socket
from wsdm_serve.server.service import JudgeService
from wsdm_serve.settings import JudgeSettings
from wsdm_serve.truncation import TruncationConfig

TRUNCATION = TruncationConfig(token_budget=400)
TIMEOUT = 60.0
POISON = "\u2603\u2603\u2603"
"""Text whose token makes a :class:`ControlledEngine` fail the batch holding it."""


class ControlledEngine(ScoringEngine):
    """The transformers engine underneath; ``gate`` holds every batch until it is set, a batch with
    the ``poison`` token fails, ``scored`` counts the prompts scored and ``busy`` is set while a
    batch waits at the gate or is scored."""

    name = "hf"

    def __init__(self, inner: HFEngine, poison: int | None = None) -> None:
        self.inner = inner
        self.poison = poison
        self.gate = threading.Event()
        self.gate.set()
        self.busy = threading.Event()
        self.scored = 0

    def __getattr__(self, name: str):  # batch_tokens, dtype, device
        return getattr(self.inner, name)

    def score(self, sequences, progress=None):
        self.busy.set()
        try:
            if not self.gate.wait(timeout=TIMEOUT):
                raise RuntimeError("the test never opened the gate")
            if self.poison is not None and any(self.poison in sequence for sequence in sequences):
                raise RuntimeError("poisoned prompt")
            result = self.inner.score(sequences, progress)
            self.scored += len(sequences)
            return result
        finally:
            self.busy.clear()

    def close(self) -> None:
        self.inner.close()


def serve_config(model_dir: Path, judge: dict | None = None, **overrides) -> ServeConfig:
    """The service's settings; ``judge`` overrides fields of its JudgeSettings."""
    settings = JudgeSettings(
        model=model_dir,
        engine=EngineSettings(name="hf", device="cpu"),
        truncation=TRUNCATION,
        **(judge or {}),
    )
    return ServeConfig(judge=settings, **overrides)


def controlled_service(
    config: ServeConfig,
    *,
    window_ms: float = 20.0,
    poison: bool = False,
    build_gate: threading.Event | None = None,
) -> tuple[JudgeService, dict]:
    """A service whose engine is a :class:`ControlledEngine` (in ``holder["engine"]`` once built);
    ``build_gate``, when given, holds the engine's loading until it is set."""
    holder: dict = {}

    def make_engine(letters, longest):
        def build() -> ControlledEngine:
            if build_gate is not None and not build_gate.wait(timeout=TIMEOUT):
                raise RuntimeError("the test never let the engine load")
            inner = HFEngine(config.judge.model, letters, EngineSettings(name="hf", device="cpu"))
            token = None
            if poison:
                token = holder["poison_token"]
            holder["engine"] = engine = ControlledEngine(inner, token)
            return engine

        return BatchingEngine(build, window_s=window_ms / 1000)

    service = JudgeService.prepare(config, make_engine)
    if poison:
        holder["poison_token"] = poison_token(service.judge.tokenizer)
    return service, holder


def poison_token(tokenizer) -> int:
    """A token of :data:`POISON` that the judge's template never holds."""
    from wsdm_serve.prompt import JudgePrompt

    template = set(tokenizer(JudgePrompt(tokenizer).render("q", "a", "b"))["input_ids"])
    candidates = [
        t for t in tokenizer(f" {POISON} ", add_special_tokens=False)["input_ids"] if t not in template
    ]
    assert candidates, "the poison text has no token of its own"
    return candidates[0]


@contextlib.contextmanager
def running(service: JudgeService, *, ready: bool = True) -> Iterator[JudgeServer]:
    """A real uvicorn server for ``service`` on a free loopback port, stopped on exit."""
    server = JudgeServer(service, bind_socket("127.0.0.1", 0)).start()
    try:
        if ready:
            server.wait_ready()
        yield server
    finally:
        server.stop()


def metric(client: httpx.Client, name: str, labels: str = "") -> float:
    """One sample of the server's /metrics (0 when absent)."""
    text = client.get("/metrics").text
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    found = re.search(pattern, text, flags=re.M)
    return float(found.group(1)) if found else 0.0


def wait_until(condition, timeout: float = 20.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def pair(i: int, prefix: str = "p") -> dict:
    """A short distinct pair (texts differ with ``i``, so its score does too)."""
    return {
        "id": f"{prefix}{i}",
        "prompt": f"Question {i}: which number is larger, {i} or {i + 7}?",
        "response_a": f"{i + 7} is larger than {i}." + " Indeed." * (i % 5),
        "response_b": f'["{i}", "is larger"] {"really " * (i % 3)}',
    }


class ServerProcess:
    """`wsdm-serve serve` in a subprocess on a free port (``--port 0``); the URL is read from the
    line it prints when it listens."""

    def __init__(self, *args: str | Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [console_script("wsdm-serve"), "serve", "--port", "0", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                self.url = found.group(1)
                self._listening.set()
        self._listening.set()

    def wait_listening(self, timeout: float = TIMEOUT) -> str:
        if not self._listening.wait(timeout) or self.url is None:
            self.kill()
            raise AssertionError("the server did not start:\n" + self.output())
        return self.url

    def wait_ready(self, client: httpx.Client, timeout: float = TIMEOUT) -> None:
        wait_until(
            lambda: _status(client, "/health") == 200 or self.process.poll() is not None,
            timeout,
            "/health 200",
        )
        assert self.process.poll() is None, self.output()

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def output(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _status(client: httpx.Client, path: str) -> int:
    try:
        return client.get(path).status_code
    except httpx.TransportError:
        return 0
