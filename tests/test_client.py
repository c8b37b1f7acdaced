"""JudgeClient against real servers: answers in order, retries on 429/503 and connection errors,
timeouts, errors with the server's message; and the README's client and curl examples, run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.server_helpers import TIMEOUT, controlled_service, metric, pair, running, serve_config, wait_until
from wsdm_serve.client import JudgeClient, JudgeError
from wsdm_serve.server.runner import JudgeServer, bind_socket

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    service, holder = controlled_service(
        serve_config(tiny_model_dir, max_queued_pairs=8, max_pairs_per_request=8)
    )
    with running(service) as server:
        server.holder = holder
        yield server


@pytest.fixture
def engine(server):
    engine = server.holder["engine"]
    engine.gate.set()
    yield engine
    engine.gate.set()


def test_judge_returns_probabilities_in_order_and_splits_long_lists(server, engine):
    pairs = [pair(i) for i in range(20)]
    with JudgeClient(server.url, batch_size=8) as client, httpx.Client(base_url=server.url) as http:
        requests_before = metric(http, "wsdm_requests_total", 'route="/v1/judge",status="200"')
        results = client.results(pairs, swap="all")
        assert metric(http, "wsdm_requests_total", 'route="/v1/judge",status="200"') == requests_before + 3
        assert [r["id"] for r in results] == [p["id"] for p in pairs]
        probabilities = client.judge([(p["prompt"], p["response_a"], p["response_b"]) for p in pairs])
        assert probabilities == pytest.approx([r["p_a_forward"] for r in results], abs=1e-6)
        assert client.judge(pairs[:3], text_normalization="none") != client.judge(pairs[:3])
        assert client.model()["engine"] == "hf"


def test_429_is_retried_until_the_queue_has_room(server, engine):
    engine.gate.clear()
    with (
        JudgeClient(server.url, backoff=0.05, max_backoff=0.2, retries=50) as client,
        ThreadPoolExecutor(2) as pool,
    ):
        holding = pool.submit(client.judge, [pair(i) for i in range(8)])  # fills the queue of 8
        wait_until(engine.busy.is_set, what="the queue to be full")
        retried = pool.submit(client.judge, [pair(9)])
        time.sleep(0.5)
        assert not retried.done()  # answered 429, waiting to retry
        engine.gate.set()
        assert len(holding.result(TIMEOUT)) == 8 and len(retried.result(TIMEOUT)) == 1


def test_503_while_loading_and_connection_errors_are_retried(tiny_model_dir):
    """The client starts before anything listens: refused connections, then 503 while the engine
    loads, then the answer."""
    with bind_socket("127.0.0.1", 0) as probe:
        port = probe.getsockname()[1]
    loaded = threading.Event()
    service, _ = controlled_service(serve_config(tiny_model_dir), build_gate=loaded)
    client = JudgeClient(f"http://127.0.0.1:{port}", backoff=0.05, max_backoff=0.2, retries=200)
    with client, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.judge, [pair(1), pair(2)])
        time.sleep(0.5)  # refused meanwhile
        server = JudgeServer(service, bind_socket("127.0.0.1", port)).start()
        try:
            with httpx.Client(base_url=server.url) as http:
                wait_until(lambda: metric(http, "wsdm_requests_total", 'route="/v1/judge",status="503"') > 0)
            assert not answer.done()
            loaded.set()
            assert len(answer.result(TIMEOUT)) == 2
        finally:
            server.stop()


def test_errors_carry_the_servers_message_and_are_not_retried(server, engine):
    with JudgeClient(server.url) as client:
        with pytest.raises(JudgeError) as raised:
            client.judge([{"prompt": "p", "response_a": "a"}])
        assert raised.value.status == 422 and raised.value.body["field"] == "response_b"
        assert str(raised.value) == "422: pairs[0].response_b: missing"
    with JudgeClient(server.url, api_key="unexpected") as client:
        assert client.judge([pair(0)])  # a key the server does not ask for is ignored


def test_a_timeout_and_an_unreachable_server_raise_after_the_retries(server, engine):
    engine.gate.clear()
    with (
        JudgeClient(server.url, timeout=0.3, retries=0) as client,
        pytest.raises(JudgeError, match="ReadTimeout"),
    ):
        client.judge([pair(0)])
    engine.gate.set()
    with bind_socket("127.0.0.1", 0) as probe:
        port = probe.getsockname()[1]
    started = time.monotonic()
    client = JudgeClient(f"http://127.0.0.1:{port}", retries=3, backoff=0.05)
    with client, pytest.raises(JudgeError, match="ConnectError") as raised:
        client.judge([pair(0)])
    assert raised.value.status == 0 and time.monotonic() - started < 5


def readme_section() -> str:
    match = re.search(r"^### `wsdm-serve serve`$(.*?)^### ", README, flags=re.M | re.S)
    assert match, "README has no `wsdm-serve serve` section"
    return match.group(1)


def test_the_readme_client_example_runs_as_written(server, engine):
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```$", readme_section(), flags=re.M | re.S)]
    assert len(blocks) == 1 and "JudgeClient" in blocks[0]
    code = blocks[0].replace("http://127.0.0.1:8000", server.url)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.split()
    assert len(printed) >= 2 and all(0.0 <= float(value) <= 1.0 for value in printed[:2]), result.stdout


def test_the_readme_curl_example_is_valid_and_answers(server, engine):
    blocks = re.findall(r"^```bash\n(.*?)^```$", readme_section(), flags=re.M | re.S)
    commands = [b.replace("\\\n", " ") for b in blocks if b.lstrip().startswith("curl")]
    assert len(commands) == 1, "the serve section should show one curl call"
    command = commands[0].replace("http://127.0.0.1:8000", server.url).strip()
    body = json.loads(re.search(r"-d '(.*?)'", command, flags=re.S).group(1))
    assert set(body) <= {"pairs", "swap", "text_normalization"} and body["pairs"]
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed here; the body was checked")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert len(answer["results"]) == len(body["pairs"]) and answer["usage"]["pairs"] == len(body["pairs"])


def test_the_serving_page_shows_valid_requests_and_answers():
    from wsdm_serve.server.schema import JudgeResponse, parse_judge_request

    page = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    request, answer = (
        json.loads(block) for block in re.findall(r"^```json\n(.*?)^```$", page, flags=re.M | re.S)
    )
    assert len(parse_judge_request(json.dumps(request).encode(), 256).pairs) == len(answer["results"])
    JudgeResponse.model_validate(answer)
    bodies = re.findall(r"-d '(.*?)'", page, flags=re.S)
    assert bodies and all(parse_judge_request(body.encode(), 256).pairs for body in bodies)
