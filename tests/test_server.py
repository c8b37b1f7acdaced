"""`wsdm-serve serve` over real HTTP: answers equal Judge.predict, many concurrent clients get every
answer under their own ids with real batching, every bad input gets its status and one message,
and the metrics, model and schema routes answer.

One real uvicorn server for the module (the tiny model on the hf engine, on a free loopback port).
"""

from __future__ import annotations

import asyncio
import json
import random
import re

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import ARENA_SAMPLE
from tests.server_helpers import TIMEOUT, TRUNCATION, metric, pair, running, serve_config
from wsdm_serve.data import load_arena_rows
from wsdm_serve.engines.asynchronous import BatchingOptions
from wsdm_serve.judge import Judge
from wsdm_serve.prompt import letter_token_ids
from wsdm_serve.server.service import JudgeService
from wsdm_serve.settings import JudgeSettings

MAX_PAIRS = 16
MAX_BODY = 1024 * 1024


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    config = serve_config(
        tiny_model_dir,
        batching=BatchingOptions(window_ms=20),
        max_pairs_per_request=MAX_PAIRS,
        max_body_bytes=MAX_BODY,
    )
    with running(JudgeService.prepare(config)) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


def raw_pairs(frame: pd.DataFrame) -> list[dict]:
    """The table's rows as the API takes them: texts as they are in the file (the server normalises)."""
    return [
        {"id": int(row.id), "prompt": row.prompt, "response_a": row.response_a, "response_b": row.response_b}
        for row in frame.itertuples()
    ]


@pytest.fixture(scope="module")
def offline(tiny_model_dir):
    """Judge.predict with every row re-scored swapped: ``forward`` is what predict gives without TTA."""
    config = JudgeSettings(model=tiny_model_dir, tta="all", truncation=TRUNCATION, progress=False)
    with Judge(config) as judge:
        yield judge


def judge_all(client: httpx.Client, pairs: list[dict], **options) -> list[dict]:
    results = []
    for start in range(0, len(pairs), MAX_PAIRS):
        response = client.post("/v1/judge", json={"pairs": pairs[start : start + MAX_PAIRS], **options})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["usage"]["pairs"] == len(body["results"]) == len(pairs[start : start + MAX_PAIRS])
        results += body["results"]
    return results


@pytest.mark.parametrize("normalization", ["reference", "none"])
def test_answers_equal_judge_predict_with_and_without_swap(client, offline, normalization):
    frame = pd.read_parquet(ARENA_SAMPLE)
    pairs = raw_pairs(frame)
    options = {} if normalization == "reference" else {"text_normalization": "none"}
    plain = judge_all(client, pairs, **options)
    swapped = judge_all(client, pairs, swap="all", **options)
    expected = offline.predict(load_arena_rows(ARENA_SAMPLE, normalization))

    assert [r["id"] for r in plain] == [r["id"] for r in swapped] == frame["id"].tolist()
    np.testing.assert_allclose([r["p_a"] for r in plain], expected.forward[:, 0], atol=1e-6, rtol=0)
    np.testing.assert_allclose([r["p_b"] for r in plain], expected.forward[:, 1], atol=1e-6, rtol=0)
    assert all("p_a_swapped" not in r for r in plain)
    winners = np.where(expected.forward[:, 0] > expected.forward[:, 1], "model_a", "model_b")
    assert [r["winner"] for r in plain] == winners.tolist()
    np.testing.assert_allclose([r["p_a"] for r in swapped], expected.probs[:, 0], atol=1e-6, rtol=0)
    np.testing.assert_allclose([r["p_b"] for r in swapped], expected.probs[:, 1], atol=1e-6, rtol=0)
    np.testing.assert_allclose([r["p_a_forward"] for r in swapped], expected.forward[:, 0], atol=1e-6, rtol=0)
    # The swapped prompt holds response_a in slot B: its probability is the swapped pass's B column.
    np.testing.assert_array_equal(expected.rescored, np.arange(len(frame)))
    np.testing.assert_allclose([r["p_a_swapped"] for r in swapped], expected.swapped[:, 1], atol=1e-6, rtol=0)


def test_usage_counts_forward_and_swapped_tokens(client, offline):
    frame = pd.read_parquet(ARENA_SAMPLE).iloc[:4]
    plain = client.post("/v1/judge", json={"pairs": raw_pairs(frame)}).json()["usage"]
    swapped = client.post("/v1/judge", json={"pairs": raw_pairs(frame), "swap": "all"}).json()["usage"]
    prompts = offline.prompts(load_arena_rows(ARENA_SAMPLE))
    forward = sum(len(ids) for ids in prompts.token_ids[:4])
    backward = sum(len(ids) for ids in prompts.swapped_token_ids[:4])
    assert plain == {"pairs": 4, "tokens": forward}
    assert swapped == {"pairs": 4, "tokens": forward + backward}


def test_concurrent_clients_get_every_answer_under_their_own_ids_in_few_batches(server, client):
    """64 clients send 10 requests each of 1-8 pairs at once; every answer comes back, in order,
    under its own id, with the score of its own pair, and the engine ran fewer batches than there
    were requests."""
    distinct = [pair(i) for i in range(48)]
    reference = {r["id"]: r["p_a"] for r in judge_all(client, distinct)}
    rng = random.Random(15)
    plan = [[rng.randint(1, 8) for _ in range(10)] for _ in range(64)]
    batches_before = metric(client, "wsdm_engine_batch_sequences_count")

    async def one_client(http: httpx.AsyncClient, number: int) -> list[tuple[list, list]]:
        exchanges = []
        for request, size in enumerate(plan[number]):
            sources = [rng.randrange(len(distinct)) for _ in range(size)]
            pairs = [{**distinct[s], "id": f"c{number}-r{request}-p{k}"} for k, s in enumerate(sources)]
            response = await http.post("/v1/judge", json={"pairs": pairs})
            assert response.status_code == 200, response.text
            exchanges.append((pairs, sources, response.json()["results"]))
        return exchanges

    async def everyone():
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT, limits=limits) as http:
            return await asyncio.wait_for(asyncio.gather(*(one_client(http, n) for n in range(64))), 120)

    exchanges = [item for per_client in asyncio.run(everyone()) for item in per_client]
    assert len(exchanges) == 640
    seen = []
    for pairs, sources, results in exchanges:
        assert [r["id"] for r in results] == [p["id"] for p in pairs]
        np.testing.assert_allclose(
            [r["p_a"] for r in results], [reference[distinct[s]["id"]] for s in sources], atol=1e-5, rtol=0
        )
        seen += [r["id"] for r in results]
    assert len(seen) == len(set(seen)) == sum(map(sum, plan))
    batches = metric(client, "wsdm_engine_batch_sequences_count") - batches_before
    assert 0 < batches < len(exchanges), batches


BAD_INPUTS = [
    pytest.param(b"{not json", 400, r"^invalid JSON: .* at line 1 column 2$", None, None, id="invalid-json"),
    pytest.param(b"\xff\xfe", 400, "^invalid JSON", None, None, id="not-utf8"),
    pytest.param([pair(0)], 422, "must be a JSON object", None, None, id="not-an-object"),
    pytest.param({"pairs": []}, 422, "^pairs: no pairs", None, "pairs", id="no-pairs"),
    pytest.param({}, 422, "^pairs: missing$", None, "pairs", id="no-pairs-field"),
    pytest.param(
        {"pairs": pair(0)}, 422, "^pairs: must be a list of pairs$", None, "pairs", id="pairs-not-a-list"
    ),
    pytest.param(
        {"pairs": [pair(i) for i in range(MAX_PAIRS + 1)]},
        422,
        rf"^pairs: {MAX_PAIRS + 1} pairs, more than .*\({MAX_PAIRS}, --max-pairs-per-request\)",
        None,
        "pairs",
        id="too-many-pairs",
    ),
    pytest.param(
        {"pairs": [pair(0), {k: v for k, v in pair(1).items() if k != "response_b"}]},
        422,
        r"^pairs\[1\]\.response_b: missing$",
        1,
        "response_b",
        id="missing-field",
    ),
    pytest.param(
        {"pairs": [pair(0), pair(1), {**pair(2), "prompt": 7}]},
        422,
        r"^pairs\[2\]\.prompt: must be a string$",
        2,
        "prompt",
        id="number-as-text",
    ),
    pytest.param(
        {"pairs": [{**pair(0), "response_a": None}]},
        422,
        r"^pairs\[0\]\.response_a: must be a string$",
        0,
        "response_a",
        id="null-text",
    ),
    pytest.param(
        {"pairs": [{**pair(0), "response_b": ["turn 1", "turn 2"]}]},
        422,
        r"^pairs\[0\]\.response_b: must be a string$",
        0,
        "response_b",
        id="list-as-text",
    ),
    pytest.param(
        {"pairs": [pair(0), {**pair(1), "id": 1.5}]},
        422,
        r"^pairs\[1\]\.id: must be a string, an integer or null$",
        1,
        "id",
        id="float-id",
    ),
    pytest.param(
        {"pairs": [{**pair(0), "id": True}]},
        422,
        r"^pairs\[0\]\.id: must be a string, an integer or null$",
        0,
        "id",
        id="bool-id",
    ),
    pytest.param(
        b"[" * 100_000 + b"]" * 100_000, 400, "^invalid JSON: nested too deeply$", None, None, id="deep-json"
    ),
    pytest.param(
        {"pairs": [pair(0), "text"]}, 422, r"^pairs\[1\]: must be an object", 1, None, id="pair-not-object"
    ),
    pytest.param(
        b'{"pairs": [{"prompt": "\\ud800", "response_a": "a", "response_b": "b"}]}',
        422,
        r"^pairs\[0\]\.prompt: not valid Unicode \(an unpaired surrogate \\ud800",
        0,
        "prompt",
        id="lone-surrogate",
    ),
    pytest.param(
        {"pairs": [pair(0)], "swap": "both"},
        422,
        "^swap: Input should be 'none' or 'all'",
        None,
        "swap",
        id="bad-swap",
    ),
    pytest.param(
        {"pairs": [pair(0)], "text_normalization": "nfkc"},
        422,
        "^text_normalization: ",
        None,
        "text_normalization",
        id="bad-normalization",
    ),
    pytest.param(
        {"pairs": [pair(0)], "tta": "all"}, 422, "^tta: unknown field", None, "tta", id="unknown-option"
    ),
]


@pytest.mark.parametrize(("body", "status", "message", "index", "field"), BAD_INPUTS)
def test_bad_input_gets_its_status_and_one_message(client, body, status, message, index, field):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post("/v1/judge", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) <= {"error", "pair", "field"}
    assert re.search(message, error["error"]), error
    assert error.get("pair") == index and error.get("field") == field


def test_a_body_over_the_limit_is_413_declared_or_streamed(client):
    big = json.dumps({"pairs": [{**pair(0), "prompt": "x" * MAX_BODY}]}).encode()
    declared = client.post("/v1/judge", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert declared.json() == {
        "error": f"the body has {len(big)} bytes, more than {MAX_BODY} (--max-body-bytes)"
    }

    def chunks():  # no Content-Length: the size is only known while reading
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    streamed = client.post("/v1/judge", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert streamed.json() == {"error": f"the body is more than {MAX_BODY} bytes (--max-body-bytes)"}
    assert client.post("/v1/judge", json={"pairs": [pair(0)]}).status_code == 200


def test_unknown_routes_and_methods_are_json_errors(client):
    assert client.get("/v1/judge").status_code == 405
    assert client.get("/v1/judge").json() == {"error": "Method Not Allowed"}
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.get("/docs").status_code == 404


def test_health_model_and_metrics_routes(client, tiny_model_dir, tokenizer):
    assert client.get("/health").json() == {"status": "ready"}
    info = client.get("/v1/model").json()
    letters = letter_token_ids(tokenizer)
    assert info["model"] == str(tiny_model_dir) and info["state"] == "ready"
    assert (info["engine"], info["precision"], info["device"]) == ("hf", "float32", "cpu")
    assert info["letter_ids"] == {"A": letters[0], "B": letters[1]}
    assert info["truncation"] == {
        "token_budget": 400,
        "response_word_cap": 4200,
        "query_word_cap": 256,
        "query_token_cap": 256,
    }
    assert info["text_normalization"] == "reference"
    assert info["limits"]["max_pairs_per_request"] == MAX_PAIRS and info["batch_window_ms"] == 20

    from prometheus_client.parser import text_string_to_metric_families

    client.post("/v1/judge", json={"pairs": [pair(1), pair(2)]})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    for name in (
        "wsdm_requests",
        "wsdm_pairs",
        "wsdm_prompt_tokens",
        "wsdm_judge_seconds",
        "wsdm_queued_pairs",
        "wsdm_queued_pairs_limit",
        "wsdm_engine_batch_sequences",
        "wsdm_engine_batch_tokens",
        "wsdm_aborted_prompts",
        "wsdm_engine_ready",
    ):
        assert name in families, name
    statuses = {(s.labels["route"], s.labels["status"]) for s in families["wsdm_requests"].samples if s.value}
    assert {("/v1/judge", "200"), ("/health", "200"), ("/v1/model", "200")} <= statuses
    assert metric(client, "wsdm_queued_pairs") == 0
    assert metric(client, "wsdm_engine_ready") == 1
    assert metric(client, "wsdm_pairs_total") >= 2


def test_the_openapi_schema_describes_the_api(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/judge", "/v1/model", "/metrics", "/health"} <= set(schema["paths"])
    judge = schema["paths"]["/v1/judge"]["post"]
    assert judge["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JudgeRequest"
    }
    components = schema["components"]["schemas"]
    assert set(components["JudgeRequest"]["properties"]) == {"pairs", "swap", "text_normalization"}
    assert set(components["Pair"]["required"]) == {"prompt", "response_a", "response_b"}
    assert "JudgeResponse" in components and "ErrorBody" in components
    assert {"413", "422", "429", "503"} <= set(judge["responses"])
