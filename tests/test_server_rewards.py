"""The reward routes over real HTTP: ``POST /v1/rewards`` and OpenRLHF's ``POST /get_reward``
answer what ``/v1/judge`` and the in-process judge answer for the same pairs, a request's pairs go
to the engine as one submission, bad input is one message naming the group and field, a full queue
is 429, and ``JudgeClient.score_groups`` sends groups whole within its batch size.

One real uvicorn server for the module (the tiny model on the hf engine behind a gate, on a free
loopback port) and one in-process judge with the same settings.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import numpy as np
import pytest

from tests.server_helpers import (
    TIMEOUT,
    TRUNCATION,
    controlled_service,
    metric,
    running,
    serve_config,
    wait_until,
)
from tests.test_rewards import reward_groups
from wsdm_serve import Judge
from wsdm_serve.client import JudgeClient

MAX_PAIRS = 24
QUEUE = 32


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    config = serve_config(tiny_model_dir, max_pairs_per_request=MAX_PAIRS, max_queued_pairs=QUEUE)
    service, holder = controlled_service(config, window_ms=20)
    with running(service) as server:
        server.holder = holder
        yield server


@pytest.fixture
def engine(server):
    engine = server.holder["engine"]
    engine.gate.set()
    yield engine
    engine.gate.set()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture(scope="module")
def judge(tiny_model_dir):
    with Judge.from_pretrained(
        tiny_model_dir, engine="hf", token_budget=TRUNCATION.token_budget, progress=False
    ) as judge:
        judge.start()
        yield judge


def rewards(client: httpx.Client, groups: list[dict], method: str, **options) -> dict:
    response = client.post("/v1/rewards", json={"groups": groups, "method": method, **options})
    assert response.status_code == 200, response.text
    return response.json()


def test_vs_reference_rewards_are_what_v1_judge_returns_as_p_a_with_swap_all(client, judge, engine):
    groups = reward_groups(3, 4)
    answer = rewards(client, groups, "vs-reference")
    assert answer["method"] == "vs-reference"
    assert answer["usage"]["groups"] == 3 and answer["usage"]["pairs"] == 12
    pairs = [
        {"prompt": g["prompt"], "response_a": r, "response_b": g["reference"]}
        for g in groups
        for r in g["responses"]
    ]
    judged = client.post("/v1/judge", json={"pairs": pairs, "swap": "all"}).json()
    got = [reward for result in answer["results"] for reward in result["rewards"]]
    np.testing.assert_allclose(got, [r["p_a"] for r in judged["results"]], atol=1e-6, rtol=0)
    assert answer["usage"]["tokens"] == judged["usage"]["tokens"]
    assert [r["id"] for r in answer["results"]] == ["g0", "g1", "g2"]
    first = answer["results"][0]
    assert first["strengths"] is None and len(first["matrix"]) == 5
    assert first["matrix"][0][0] is None and first["matrix"][0][4] == pytest.approx(first["rewards"][0])
    in_process = judge.score_groups(groups, method="vs-reference")
    np.testing.assert_allclose(got, np.concatenate([s.rewards for s in in_process]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["round-robin", "circular"])
def test_group_methods_answer_what_the_in_process_judge_answers(client, judge, engine, method):
    groups = reward_groups(2, 5, reference=False)
    answer = rewards(client, groups, method, text_normalization="none")
    expected = Judge(replace(judge.settings, text_normalization="none"), judge.engine)  # the same engine
    for result, local in zip(answer["results"], expected.score_groups(groups, method=method), strict=True):
        np.testing.assert_allclose(result["rewards"], local.rewards, atol=1e-5, rtol=0)
        np.testing.assert_allclose(result["strengths"], local.strengths, atol=1e-5, rtol=0)
        np.testing.assert_allclose(result["mean_win"], local.mean_win, atol=1e-6, rtol=0)
        matrix = np.array([[np.nan if v is None else v for v in row] for row in result["matrix"]])
        np.testing.assert_allclose(matrix, local.matrix, atol=1e-6, rtol=0)


def test_a_requests_pairs_are_one_engine_submission(client, engine):
    """All pairs of all groups of one request, forward and swapped, reach the engine together."""
    groups = reward_groups(4, 3)
    batches = metric(client, "wsdm_engine_batch_sequences_count")
    sequences = metric(client, "wsdm_engine_batch_sequences_sum")
    scored = engine.scored
    rewards(client, groups, "round-robin")
    assert metric(client, "wsdm_engine_batch_sequences_count") == batches + 1
    assert metric(client, "wsdm_engine_batch_sequences_sum") == sequences + 2 * 12
    assert engine.scored == scored + 24
    assert metric(client, "wsdm_groups_total") >= 4


def test_get_reward_answers_openrlhfs_remote_reward_requests(client, tokenizer, engine):
    groups = reward_groups(2, 3)
    prompts, queries, labels = [], [], []
    for group in groups:
        chat = [{"role": "user", "content": group["prompt"]}]
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        for response in group["responses"]:
            prompts.append(prompt)
            queries.append(prompt + response + "<|im_end|>")
            labels.append(group["reference"])
    one = client.post(
        "/get_reward", json={"query": queries[:1], "prompts": prompts[:1], "labels": labels[:1]}
    )
    assert one.status_code == 200 and set(one.json()) == {"rewards", "scores"}
    answer = client.post("/get_reward", json={"query": queries, "prompts": prompts, "labels": labels}).json()
    expected = rewards(client, groups, "vs-reference")["results"]
    flat = [reward for result in expected for reward in result["rewards"]]
    np.testing.assert_allclose(answer["rewards"], flat, atol=1e-6, rtol=0)
    assert answer["scores"] == answer["rewards"] and one.json()["rewards"][0] == pytest.approx(
        flat[0], abs=1e-6
    )

    # round-robin: the queries of one prompt form a group, wherever they are in the request
    order = [0, 3, 1, 4, 2, 5]
    mixed = client.post(
        "/get_reward?method=round-robin",
        json={"query": [queries[i] for i in order], "prompts": [prompts[i] for i in order]},
    ).json()
    grouped = rewards(client, [{**g, "reference": None} for g in groups], "round-robin")["results"]
    flat = [reward for result in grouped for reward in result["rewards"]]
    np.testing.assert_allclose(mixed["rewards"], [flat[i] for i in order], atol=1e-5, rtol=0)
    assert metric(client, "wsdm_rewards_seconds_count", 'route="/get_reward",status="200"') >= 3


def group(i: int = 0, **changes) -> dict:
    return {**reward_groups(i + 1, 2)[i], **changes}


BAD_REWARDS = [
    pytest.param(b"{not json", 400, r"^invalid JSON", None, None, id="invalid-json"),
    pytest.param([group()], 422, r"must be a JSON object: \{\"groups\"", None, None, id="not-an-object"),
    pytest.param({"method": "round-robin"}, 422, r"^groups: missing$", None, "groups", id="no-groups"),
    pytest.param({"groups": [group()]}, 422, r"^method: missing$", None, "method", id="no-method"),
    pytest.param({"groups": [], "method": "circular"}, 422, r"^groups: no groups to score$", None, "groups", id="empty"),
    pytest.param({"groups": [group()], "method": "elo"}, 422, r"^method: Input should be 'vs-reference'", None, "method", id="bad-method"),
    pytest.param({"groups": [group(), group(1, reference=None)], "method": "vs-reference"}, 422,
                 r"^groups\[1\]\.reference: missing; method vs-reference compares", 1, "reference", id="no-reference"),
    pytest.param({"groups": [group(responses=["a", 7])], "method": "circular"}, 422,
                 r"^groups\[0\]\.responses\[1\]: must be a string$", 0, "responses", id="number-response"),
    pytest.param({"groups": [group(responses="ab")], "method": "circular"}, 422,
                 r"^groups\[0\]\.responses: must be a list$", 0, "responses", id="responses-not-list"),
    pytest.param({"groups": [group(responses=[])], "method": "circular"}, 422,
                 r"^groups\[0\]\.responses: empty", 0, "responses", id="no-responses"),
    pytest.param({"groups": [group(), "text"], "method": "circular"}, 422,
                 r"^groups\[1\]: must be an object$", 1, None, id="group-not-object"),
    pytest.param({"groups": [{"responses": ["a"]}], "method": "circular"}, 422,
                 r"^groups\[0\]\.prompt: missing$", 0, "prompt", id="no-prompt"),
    pytest.param({"groups": [group(id=1.5)], "method": "circular"}, 422,
                 r"^groups\[0\]\.id: must be a string, an integer or null$", 0, "id", id="float-id"),
    pytest.param(b'{"groups": [{"prompt": "p", "responses": ["ok", "\\udc00"]}], "method": "circular"}', 422,
                 r"^groups\[0\]\.responses\[1\]: not valid Unicode", 0, "responses", id="lone-surrogate"),
    pytest.param({"groups": [group()], "method": "circular", "swap": "all"}, 422,
                 r"^swap: unknown field \(a request has groups, method, text_normalization\)$", None, "swap", id="unknown-key"),
    pytest.param({"groups": [group(responses=[f"r{i}" for i in range(8)])], "method": "round-robin"}, 422,
                 rf"^groups: 1 groups make 28 pairs with method round-robin, more than .* \({MAX_PAIRS}, --max-pairs-per-request\)",
                 None, "groups", id="too-many-pairs"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "message", "index", "field"), BAD_REWARDS)
def test_bad_rewards_requests_get_one_message_naming_the_group_and_field(
    client, body, status, message, index, field
):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post("/v1/rewards", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) <= {"error", "group", "field"}
    assert re.search(message, error["error"]), error
    assert (error.get("group"), error.get("field")) == (index, field)


CHATML = "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
BAD_GET_REWARD = [
    pytest.param("", {"query": [CHATML + "Hello"], "prompts": [CHATML]}, r"^labels: missing; method vs-reference", "labels", id="no-labels"),
    pytest.param("", {"query": [CHATML + "a"], "prompts": [CHATML], "labels": []}, r"^labels: 0 labels for 1 queries$", "labels", id="few-labels"),
    pytest.param("", {"query": [CHATML + "a", CHATML + "b"], "prompts": [CHATML], "labels": ["x", "y"]}, r"^prompts: 1 prompts for 2 queries$", "prompts", id="few-prompts"),
    pytest.param("", {"query": ["Hello", CHATML + "b"], "prompts": [CHATML] * 2, "labels": ["x"] * 2}, r"^query\[0\]: does not start with prompts\[0\]", "query", id="not-prefixed"),
    pytest.param("", {"query": [CHATML + "a"], "prompts": [CHATML], "labels": [3]}, r"^labels\[0\]: must be a string$", "labels", id="number-label"),
    pytest.param("", {"prompts": [CHATML], "labels": ["x"]}, r"^query: missing$", "query", id="no-query"),
    pytest.param("", {"query": [], "prompts": [], "labels": []}, r"^query: no queries", "query", id="no-queries"),
    pytest.param("?method=best", {"query": [CHATML + "a"], "prompts": [CHATML]}, r"^method: must be one of vs-reference, round-robin, circular$", "method", id="bad-method"),
]  # fmt: skip


@pytest.mark.parametrize(("query", "body", "message", "field"), BAD_GET_REWARD)
def test_bad_get_reward_requests_get_one_message_naming_the_field(client, query, body, message, field):
    response = client.post(f"/get_reward{query}", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert re.search(message, error["error"]), error
    assert error.get("field") == field


def test_a_full_queue_answers_429_to_reward_requests(client, engine):
    engine.gate.clear()
    with ThreadPoolExecutor(1) as pool:
        holding = pool.submit(rewards, client, reward_groups(4, 5, reference=False), "circular")  # 20 pairs
        wait_until(lambda: metric(client, "wsdm_queued_pairs") == 20, what="20 pairs queued")
        refused = client.post("/v1/rewards", json={"groups": reward_groups(1, 16), "method": "vs-reference"})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"].startswith(
            f"busy: 20 pairs queued and 16 more asked for, the limit is {QUEUE}"
        )
        openrlhf = client.post(
            "/get_reward?method=round-robin",
            json={"query": [CHATML + str(i) for i in range(6)], "prompts": [CHATML] * 6},
        )
        assert openrlhf.status_code == 429  # 15 pairs
        engine.gate.set()
        assert len(holding.result(TIMEOUT)["results"]) == 4
    wait_until(lambda: metric(client, "wsdm_queued_pairs") == 0, what="an empty queue")
    assert metric(client, "wsdm_requests_total", 'route="/v1/rewards",status="429"') == 1


def test_the_client_sends_groups_whole_within_its_batch_size(server, client, judge, engine):
    groups = reward_groups(6, 4)  # 6 pairs each under round-robin
    before = metric(client, "wsdm_requests_total", 'route="/v1/rewards",status="200"')
    with JudgeClient(server.url, batch_size=MAX_PAIRS // 2) as remote:
        scored = remote.score_groups(groups, method="round-robin")  # 2 groups per request
        tuples = remote.score_groups(
            [(g["prompt"], g["responses"], g["reference"]) for g in groups[:2]], method="vs-reference"
        )
    assert metric(client, "wsdm_requests_total", 'route="/v1/rewards",status="200"') == before + 4
    local = judge.score_groups(groups, method="round-robin")
    for remote_group, local_group in zip(scored, local, strict=True):
        assert remote_group.method == "round-robin"
        np.testing.assert_allclose(remote_group.rewards, local_group.rewards, atol=1e-5, rtol=0)
        np.testing.assert_allclose(remote_group.matrix, local_group.matrix, atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        np.concatenate([g.rewards for g in tuples]),
        np.concatenate([g.rewards for g in judge.score_groups(groups[:2], method="vs-reference")]),
        atol=1e-6,
    )
    assert tuples[0].strengths is None and tuples[0].matrix.shape == (5, 5)


def test_the_openapi_schema_describes_the_reward_routes(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/rewards", "/get_reward"} <= set(schema["paths"])
    components = schema["components"]["schemas"]
    assert set(components["RewardsRequest"]["properties"]) == {"groups", "method", "text_normalization"}
    assert set(components["GroupIn"]["required"]) == {"prompt", "responses"}
    assert set(components["OpenRLHFRequest"]["properties"]) == {"query", "prompts", "labels"}
    assert {"RewardsResponse", "OpenRLHFResponse"} <= set(components)
    get_reward = schema["paths"]["/get_reward"]["post"]
    assert [p["name"] for p in get_reward["parameters"]] == ["method"]
