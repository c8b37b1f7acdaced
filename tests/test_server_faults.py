"""The service under faults, over real HTTP: an engine error fails only its request and the server
keeps serving, a client that disconnects has its queued prompts aborted, a full queue answers 429
with Retry-After and recovers, and /health says 503 while the engine loads.

The engine is the transformers one behind a gate the test opens and closes (tests/server_helpers).
"""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.server_helpers import (
    POISON,
    TIMEOUT,
    controlled_service,
    metric,
    pair,
    running,
    serve_config,
    wait_until,
)
from wsdm_serve.data import arena_rows_from_records

QUEUE = 8


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    config = serve_config(tiny_model_dir, max_queued_pairs=QUEUE, max_pairs_per_request=QUEUE)
    service, holder = controlled_service(config, window_ms=20, poison=True)
    with running(service) as server:
        server.holder = holder
        yield server


@pytest.fixture
def engine(server):
    engine = server.holder["engine"]
    engine.gate.set()
    yield engine
    engine.gate.set()  # never leave a test's gate closed for the next one


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


def post(client: httpx.Client, pairs: list[dict]) -> httpx.Response:
    return client.post("/v1/judge", json={"pairs": pairs})


def test_an_engine_error_fails_only_its_request_and_the_server_keeps_serving(server, client, engine):
    poisoned = {**pair(3), "response_a": f"fine {POISON} text"}
    tokens = server.service.judge.prompts(arena_rows_from_records([poisoned]), False).token_ids[0]
    assert engine.poison in tokens
    errors_before = metric(client, "wsdm_engine_errors_total")
    engine.gate.clear()  # the eight requests below queue up together and go into one batch
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, client, [poisoned if i == 3 else pair(i)]) for i in range(8)]
        wait_until(lambda: metric(client, "wsdm_queued_pairs") == 8, what="8 pairs queued")
        engine.gate.set()
        responses = [future.result() for future in futures]
    assert [r.status_code for r in responses] == [200, 200, 200, 500, 200, 200, 200, 200]
    assert responses[3].json() == {"error": "engine error: RuntimeError: poisoned prompt"}
    assert [r.json()["results"][0]["id"] for i, r in enumerate(responses) if i != 3] == [
        f"p{i}" for i in range(8) if i != 3
    ]
    assert metric(client, "wsdm_engine_errors_total") == errors_before + 1
    after = post(client, [pair(9)])
    assert after.status_code == 200 and after.json()["results"][0]["id"] == "p9"
    assert client.get("/health").status_code == 200


def test_a_client_that_disconnects_has_its_queued_prompts_aborted(server, client, engine):
    aborted_before = metric(client, "wsdm_aborted_prompts_total")
    gone_before = metric(client, "wsdm_client_disconnects_total")
    engine.gate.clear()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, client, [pair(1)])  # taken into a batch that waits at the gate
        wait_until(engine.busy.is_set, what="the first batch at the gate")
        scored_before = engine.scored
        body = json.dumps({"pairs": [pair(i, "gone") for i in range(3)]}).encode()
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as raw:
            raw.sendall(
                b"POST /v1/judge HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            batcher = server.service.engine
            wait_until(
                lambda: batcher.pending == 3, what="the second request's prompts in the engine's queue"
            )
        # The socket is closed: the server notices, cancels the request and drops its prompts.
        wait_until(
            lambda: metric(client, "wsdm_aborted_prompts_total") == aborted_before + 3, what="the abort"
        )
        engine.gate.set()
        assert first.result().status_code == 200
    assert engine.scored == scored_before + 1  # only the first request's prompt was scored
    assert metric(client, "wsdm_client_disconnects_total") == gone_before + 1
    assert metric(client, "wsdm_queued_pairs") == 0
    assert post(client, [pair(2)]).status_code == 200


def test_a_full_queue_answers_429_with_retry_after_and_recovers(server, client, engine):
    engine.gate.clear()
    with ThreadPoolExecutor(1) as pool:
        holding = pool.submit(post, client, [pair(i) for i in range(6)])
        wait_until(lambda: metric(client, "wsdm_queued_pairs") == 6, what="6 pairs queued")
        refused = post(client, [pair(i, "late") for i in range(3)])
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"].startswith("busy: 6 pairs queued and 3 more asked for, the limit is 8")
        assert "--max-queued-pairs" in refused.json()["error"]
        fits = threading.Thread(target=lambda: post(client, [pair(7)]))  # 6 + 2 <= 8 is still taken
        fits.start()
        wait_until(lambda: metric(client, "wsdm_queued_pairs") == 7, what="the pair that fits")
        engine.gate.set()
        assert holding.result().status_code == 200
        fits.join(TIMEOUT)
    wait_until(lambda: metric(client, "wsdm_queued_pairs") == 0, what="an empty queue")
    again = post(client, [pair(i, "late") for i in range(3)])
    assert again.status_code == 200
    assert [r["id"] for r in again.json()["results"]] == ["late0", "late1", "late2"]
    assert metric(client, "wsdm_requests_total", 'route="/v1/judge",status="429"') >= 1


def test_health_is_503_while_the_engine_loads_and_200_when_ready(tiny_model_dir):
    loaded = threading.Event()
    service, _ = controlled_service(serve_config(tiny_model_dir), build_gate=loaded)
    with (
        running(service, ready=False) as server,
        httpx.Client(base_url=server.url, timeout=TIMEOUT) as client,
    ):
        health = client.get("/health")
        assert (health.status_code, health.json()) == (503, {"status": "loading"})
        early = post(client, [pair(0)])
        assert early.status_code == 503 and early.headers["retry-after"] == "5"
        assert early.json() == {"error": "the engine is loading; retry shortly"}
        assert client.get("/v1/model").json()["state"] == "loading"
        assert metric(client, "wsdm_engine_ready") == 0
        loaded.set()
        wait_until(lambda: client.get("/health").status_code == 200, what="/health 200")
        assert post(client, [pair(0)]).status_code == 200
        assert metric(client, "wsdm_engine_ready") == 1
