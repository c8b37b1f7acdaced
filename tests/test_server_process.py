"""`wsdm-serve serve` as a process: the API key, SIGTERM under load, and the command's own errors.

Each server is a real subprocess on a free loopback port (``--port 0``), killed by its test if
anything goes wrong.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import run_cli
from tests.server_helpers import TIMEOUT, ServerProcess, metric, pair, wait_until

KEY = "s3cret-key"
TINY_ARGS = ("--device", "cpu", "--token-budget", "400")


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "key.txt"
    key_file.write_text(f"{KEY}\n")
    with ServerProcess("--model", tiny_model_dir, *TINY_ARGS, "--api-key-file", key_file) as server:
        server.wait_listening()
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            server.wait_ready(client)
        yield server


def test_the_key_is_required_on_every_route_but_health(keyed_server):
    with httpx.Client(base_url=keyed_server.url, timeout=TIMEOUT) as anonymous:
        assert anonymous.get("/health").json() == {"status": "ready"}
        for method, path in (
            ("GET", "/v1/model"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
            ("POST", "/v1/judge"),
            ("POST", "/v1/rewards"),
            ("POST", "/get_reward"),
        ):
            response = anonymous.request(method, path, json={"pairs": [pair(0)]})
            assert response.status_code == 401, path
            assert response.json() == {"error": "missing Authorization: Bearer <key>"}
            assert response.headers["www-authenticate"] == "Bearer"
        for wrong in (f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", "Bearer", f"Basic {KEY}", KEY):
            response = anonymous.get("/v1/model", headers={"Authorization": wrong})
            assert (response.status_code, response.json()) == (401, {"error": "wrong API key"}), wrong
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=keyed_server.url, timeout=TIMEOUT, headers=headers) as client:
        assert client.get("/v1/model").status_code == 200
        assert client.get("/openapi.json").json()["security"] == [{"bearer": []}]
        judged = client.post("/v1/judge", json={"pairs": [pair(0), pair(1)]})
        assert judged.status_code == 200 and [r["id"] for r in judged.json()["results"]] == ["p0", "p1"]
        rewarded = client.post(
            "/v1/rewards", json={"groups": [{"prompt": "p", "responses": ["a", "b"]}], "method": "circular"}
        )
        assert rewarded.status_code == 200 and len(rewarded.json()["results"][0]["rewards"]) == 2
        assert client.get("/v1/judge", headers={"Authorization": f"bearer {KEY}"}).status_code == 405
        assert metric(client, "wsdm_requests_total", 'route="/v1/model",status="401"') == 6


def test_a_port_in_use_is_one_line_and_port_0_picks_a_free_one():
    from wsdm_serve.errors import WsdmError
    from wsdm_serve.server.runner import bind_socket

    with bind_socket("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(
            WsdmError, match=rf"^cannot listen on 127\.0\.0\.1:{port} \(.+\); pick another --port"
        ):
            bind_socket("127.0.0.1", port)


def test_sigterm_stops_accepting_lets_every_accepted_request_finish_and_exits_0(tiny_model_dir):
    """16 requests wait in a long batch window when SIGTERM comes: new connections are refused at
    once, the 16 are all answered, and the process exits 0."""
    window = ("--batch-window-ms", "3000")
    with ServerProcess("--model", tiny_model_dir, *TINY_ARGS, *window, env={"WSDM_API_KEY": KEY}) as server:
        url = server.wait_listening()
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=url, timeout=TIMEOUT, headers=headers) as client:
            server.wait_ready(client)
            assert client.get("/v1/model").status_code == 200  # the key came from the environment

            def one(number: int) -> httpx.Response:
                pairs = [pair(number, "a"), pair(number, "b")]
                with httpx.Client(base_url=url, timeout=TIMEOUT, headers=headers) as own:
                    return own.post("/v1/judge", json={"pairs": pairs})

            with ThreadPoolExecutor(16) as pool:
                futures = [pool.submit(one, n) for n in range(16)]
                wait_until(lambda: metric(client, "wsdm_queued_pairs") == 32, what="32 pairs in flight")
                server.terminate()
                refused_at = None
                deadline = time.monotonic() + 10
                while refused_at is None and time.monotonic() < deadline:
                    try:
                        httpx.get(f"{url}/health", timeout=1)
                        time.sleep(0.02)
                    except httpx.ConnectError:
                        refused_at = time.monotonic()
                assert refused_at is not None, "the server kept accepting connections after SIGTERM"
                assert not any(f.done() for f in futures), "the requests should still be waiting"
                responses = [f.result(timeout=TIMEOUT) for f in futures]
        assert server.wait(TIMEOUT) == 0, server.output()
    for number, response in enumerate(responses):
        assert response.status_code == 200, response.text
        assert [r["id"] for r in response.json()["results"]] == [f"a{number}", f"b{number}"]
    assert "serve: stopped" in server.output()


def test_a_model_that_fails_its_check_stops_before_the_port_opens(tmp_path):
    result = run_cli("wsdm-serve", "serve", "--model", tmp_path / "missing", "--port", "0")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {tmp_path / 'missing'}: model folder not found")
    )
    assert "listening" not in result.stderr


def test_an_engine_that_cannot_load_stops_the_server_with_exit_2(model_copy):
    (model_copy / "model.safetensors").write_bytes(b"not a safetensors file")
    with ServerProcess("--model", model_copy, *TINY_ARGS) as server:
        server.wait_listening()
        assert server.wait(TIMEOUT) == 2
    output = server.output()
    assert "the engine could not start" in output and "cannot load the model" in output
    assert "serve: stopped, the engine could not start" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--max-pairs-per-request", "10", "--max-queued-pairs", "5"),
            "error: --max-pairs-per-request 10 is more than --max-queued-pairs 5: such a request could never be accepted",
        ),
        (("--api-key-file", "/nonexistent/key"), "error: /nonexistent/key: cannot read the API key file"),
        (("--engine", "hf", "--gpus", "0"), "error: --gpus: only the vllm engine takes this"),
    ],
    ids=["queue-smaller-than-a-request", "unreadable-key-file", "mixed-engine-options"],
)
def test_bad_options_are_one_line_before_anything_loads(tiny_model_dir, args, message):
    started = time.monotonic()
    result = run_cli("wsdm-serve", "serve", "--model", tiny_model_dir, "--port", "0", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert "listening" not in result.stderr and time.monotonic() - started < TIMEOUT
