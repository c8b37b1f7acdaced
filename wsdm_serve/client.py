"""A Python client of `wsdm-serve serve`.

    from wsdm_serve.client import JudgeClient

    with JudgeClient("http://127.0.0.1:8000") as judge:
        p_a = judge.judge([{"prompt": "2+2?", "response_a": "4", "response_b": "5"}])
        rewards = judge.score_groups([("2+2?", ["4", "5", "four"])], method="round-robin")

It keeps one connection pool (thread-safe: share one client between threads), retries with
exponential backoff on 429 and 503 (waiting at least what ``Retry-After`` says) and on connection
errors and timeouts (judging is idempotent, so a retried request is safe), and raises
:class:`JudgeError` with the server's message for any other error.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import httpx

from .groups import Group, group_records
from .pairs import Pair, pair_records

if TYPE_CHECKING:
    from .compare import GroupMethod, GroupRewards

RETRY_STATUSES = (429, 503)


class JudgeError(Exception):
    """The server refused or failed a request (``status`` 0: it could not be reached)."""

    def __init__(self, status: int, message: str, body: dict | None = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.body = body or {}


class JudgeClient:
    """Judge pairs on a running server.

    ``timeout`` is seconds per attempt; ``retries`` is how many times a request is sent again after
    a 429/503 answer or a connection error, waiting ``backoff * 2**attempt`` seconds (with jitter,
    at most ``max_backoff``, at least the server's ``Retry-After``). ``api_key`` defaults to none;
    ``batch_size`` splits longer lists into requests of that many pairs (the server's
    ``--max-pairs-per-request``); groups are sent whole, as many per request as keep it within
    that many pairs.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 300.0,
        retries: int = 8,
        backoff: float = 0.25,
        max_backoff: float = 10.0,
        batch_size: int | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    # ------------------------------------------------------------------ judging
    def judge(
        self, pairs: Iterable[Pair], *, swap: str = "none", text_normalization: str | None = None
    ) -> list[float]:
        """P(response_a preferred) of every pair, in order. A pair is a mapping with ``prompt``,
        ``response_a``, ``response_b`` (and optionally ``id``) or a ``(prompt, a, b)`` tuple."""
        return [
            result["p_a"] for result in self.results(pairs, swap=swap, text_normalization=text_normalization)
        ]

    def results(
        self, pairs: Iterable[Pair], *, swap: str = "none", text_normalization: str | None = None
    ) -> list[dict]:
        """The server's full result of every pair (``id, p_a, p_b, winner`` and, with
        ``swap="all"``, ``p_a_forward, p_a_swapped``), in order."""
        items = pair_records(pairs, check=False)  # the server checks the fields and answers 422
        size = self.batch_size or max(len(items), 1)
        results: list[dict] = []
        for start in range(0, len(items), size):
            body: dict[str, Any] = {"pairs": items[start : start + size], "swap": swap}
            if text_normalization is not None:
                body["text_normalization"] = text_normalization
            results += self.request("POST", "/v1/judge", json=body)["results"]
        return results

    def score_groups(
        self, groups: Iterable[Group], *, method: GroupMethod, text_normalization: str | None = None
    ) -> list[GroupRewards]:
        """``POST /v1/rewards``: the rewards of each group of responses to one prompt, in order, as
        :meth:`Judge.score_groups <wsdm_serve.judge.Judge.score_groups>` returns them. A group is a
        mapping with ``prompt``, ``responses`` and optionally ``reference`` and ``id``, or a
        ``(prompt, responses[, reference])`` tuple."""
        results = self.group_results(groups, method=method, text_normalization=text_normalization)
        return [_group_rewards(method, result) for result in results]

    def group_results(
        self, groups: Iterable[Group], *, method: str, text_normalization: str | None = None
    ) -> list[dict]:
        """The server's result of every group (``id, rewards, mean_win, strengths, matrix``), in order."""
        items = group_records(groups, check=False)  # the server checks the fields and answers 422
        sizes = [_pairs_of(method, item) for item in items]
        results: list[dict] = []
        for batch in _batches(sizes, self.batch_size):
            body: dict[str, Any] = {"groups": [items[i] for i in batch], "method": method}
            if text_normalization is not None:
                body["text_normalization"] = text_normalization
            results += self.request("POST", "/v1/rewards", json=body)["results"]
        return results

    def model(self) -> dict:
        """``GET /v1/model``: model folder, engine, precision, truncation, letter ids, limits."""
        return self.request("GET", "/v1/model")

    def ready(self) -> bool:
        """Whether ``/health`` answers 200 now (no retries)."""
        try:
            return self._http.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 600.0, interval: float = 0.5) -> None:
        """Block until the engine is ready, for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise JudgeError(0, f"{self.url} was not ready within {timeout} s")
            time.sleep(interval)

    # ------------------------------------------------------------------ transport
    def request(self, method: str, path: str, **kwargs) -> dict:
        """One API call with the retry policy; the decoded JSON answer."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:  # refused, reset, timed out
                if attempt >= self.retries:
                    raise JudgeError(0, f"{self.url}{path}: {type(exc).__name__}: {exc}") from exc
                self._sleep(attempt, None)
                attempt += 1
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                self._sleep(attempt, response.headers.get("retry-after"))
                attempt += 1
                continue
            body = _json(response)
            if response.status_code >= 400:
                raise JudgeError(response.status_code, str(body.get("error", response.text)), body)
            return body

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
        if retry_after is not None:
            with contextlib.suppress(ValueError):  # an HTTP date instead of seconds: keep the backoff
                delay = max(delay, min(float(retry_after), self.max_backoff))
        time.sleep(delay)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pairs_of(method: str, item: dict) -> int:
    """How many pairs a group is judged on (0 when the group or the method is malformed: the
    server's 422 will say how)."""
    from .compare import GROUP_METHODS, group_pairs

    responses = item.get("responses") if isinstance(item, dict) else None
    if method not in GROUP_METHODS or not isinstance(responses, list):
        return 0
    return len(group_pairs(method, len(responses)))


def _batches(sizes: list[int], limit: int | None) -> list[list[int]]:
    """Consecutive groups whose pairs add up to at most ``limit`` (all in one without a limit); a
    group larger than the limit goes alone, and the server answers whether it takes it."""
    if limit is None:
        return [list(range(len(sizes)))] if sizes else []
    batches: list[list[int]] = []
    total = 0
    for index, size in enumerate(sizes):
        if batches and total + size <= limit:
            batches[-1].append(index)
            total += size
        else:
            batches.append([index])
            total = size
    return batches


def _group_rewards(method: str, result: dict) -> GroupRewards:
    """A group's JSON result as :class:`~wsdm_serve.compare.GroupRewards` (null -> NaN)."""
    import numpy as np

    from .compare import GroupRewards

    def array(values) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    strengths = result.get("strengths")
    return GroupRewards(
        method=method,
        rewards=array(result["rewards"]),
        matrix=np.array([array(row) for row in result["matrix"]]).reshape(len(result["matrix"]), -1),
        mean_win=array(result["mean_win"]),
        strengths=None if strengths is None else array(strengths),
    )


def _json(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {"error": response.text.strip() or response.reason_phrase}
    return body if isinstance(body, dict) else {"error": str(body)}
