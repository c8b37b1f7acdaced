"""docs/rewards.md, run as written: TRL's ``GRPOTrainer`` trains a tiny policy on a CPU for two steps
with ``JudgeReward`` as its reward, once with the judge in the training process and once against a
real `wsdm-serve serve` on loopback, and every reward TRL logged equals what the service returns
for the same completions; the in-Python example, the curl calls (``/v1/rewards`` and OpenRLHF's
``/get_reward``) and the verl ``compute_score`` run against the same server.

The page's folder layout is made in a temporary folder: the tiny judge at ``model_save/final_model``,
``data/grpo.jsonl``, and a tiny random Qwen2 policy (1 layer of hidden 16, the real Qwen2.5
tokenizer and chat template) saved under the hub name the page uses, ``Qwen/Qwen2.5-0.5B-Instruct``,
which transformers reads as a local folder (``HF_HUB_OFFLINE=1``: nothing is fetched). TRL writes
what it logged (prompt, completion, each reward function's reward, advantage) to
``<output_dir>/completions/completions_<step>.parquet``; those files are what is compared.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import TOKENIZER_DIR
from tests.server_helpers import ServerProcess, metric
from wsdm_serve.rewards.messages import completion_text, prompt_text

pytest.importorskip("trl", reason="the rl extra (trl) is not installed")

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "rewards.md").read_text()
POLICY = "Qwen/Qwen2.5-0.5B-Instruct"
URL = "http://127.0.0.1:8000"
TIMEOUT = 600
GROUP = 4  # the page's num_generations
PROMPTS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Say hi in Spanish.", "¡Hola!"),
    ("Name a prime number larger than 10.", "11 is a prime number larger than 10."),
    ("What colour is the sky on a clear day?", "Blue."),
]


def blocks(language: str, *needles: str, without: str | None = None) -> str:
    """The page's one code block in ``language`` that holds every needle (and not ``without``)."""
    found = [
        block
        for block in re.findall(rf"^```{language}\n(.*?)^```$", PAGE, flags=re.M | re.S)
        if all(needle in block for needle in needles) and (without is None or without not in block)
    ]
    assert len(found) == 1, f"docs/rewards.md: {len(found)} {language} blocks with {needles}"
    return found[0]


@pytest.fixture(scope="module")
def layout(tiny_model_dir, tmp_path_factory) -> Path:
    from wsdm_serve.tiny import build_tiny_model

    folder = tmp_path_factory.mktemp("rewards-docs")
    (folder / "model_save").mkdir()
    shutil.copytree(tiny_model_dir, folder / "model_save" / "final_model")
    build_tiny_model(folder / POLICY, TOKENIZER_DIR, hidden_size=16, layers=1, heads=2, kv_heads=1, intermediate_size=32)  # fmt: skip
    (folder / "data").mkdir()
    lines = [json.dumps({"prompt": [{"role": "user", "content": q}], "reference": r}) for q, r in PROMPTS]
    (folder / "data" / "grpo.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """`wsdm-serve serve` with the settings the page's in-process judge has (the defaults)."""
    with ServerProcess("--model", tiny_model_dir, "--device", "cpu") as server:
        url = server.wait_listening()
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            server.wait_ready(client, timeout=120)
            server.client = client
            yield server


def run_python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def logged_steps(output_dir: Path) -> list[pd.DataFrame]:
    files = sorted((output_dir / "completions").glob("completions_*.parquet"))
    assert [f.name for f in files] == ["completions_00001.parquet", "completions_00002.parquet"]
    return [pd.read_parquet(f) for f in files]


def logged_groups(frame: pd.DataFrame, references: dict | None) -> list[dict]:
    """The step's completions, ``GROUP`` at a time as TRL handed them over, as /v1/rewards groups."""
    assert len(frame) % GROUP == 0
    groups = []
    for start in range(0, len(frame), GROUP):
        rows = frame.iloc[start : start + GROUP]
        prompts = {json.dumps(list(p) if not isinstance(p, str) else p, default=str) for p in rows["prompt"]}
        assert len(prompts) == 1, "a group of completions of different prompts"
        prompt = rows["prompt"].iloc[0]
        group = {
            "prompt": prompt_text(prompt if isinstance(prompt, str) else list(prompt)),
            "responses": [completion_text(c if isinstance(c, str) else list(c)) for c in rows["completion"]],
        }
        if references is not None:
            group["reference"] = references[group["prompt"]]
        groups.append(group)
    return groups


def assert_service_agrees(client: httpx.Client, frame: pd.DataFrame, method: str, references=None) -> None:
    groups = logged_groups(frame, references)
    answer = client.post("/v1/rewards", json={"groups": groups, "method": method})
    assert answer.status_code == 200, answer.text
    served = np.array([r for result in answer.json()["results"] for r in result["rewards"]])
    logged = frame["wsdm_judge"].to_numpy()  # TRL keeps rewards as float32
    np.testing.assert_allclose(logged, served.astype(np.float32), atol=1e-6, rtol=0)
    assert np.abs(frame["advantage"].to_numpy()).max() > 0  # the rewards differ within groups


def test_grpo_with_the_judge_in_process_logs_what_the_service_returns(layout, server):
    code = blocks("python", "GRPOTrainer", "Judge.from_pretrained")
    run_python(code, layout)
    references = {question: reference for question, reference in PROMPTS}
    for frame in logged_steps(layout / "sub" / "grpo"):
        assert len(frame) == 8 and isinstance(frame["prompt"].iloc[0][0], dict)  # conversational
        assert_service_agrees(server.client, frame, "vs-reference", references)


def test_grpo_against_the_server_logs_what_the_service_returns(layout, server):
    code = blocks("python", "GRPOTrainer", URL).replace(URL, server.url)
    before = metric(server.client, "wsdm_requests_total", 'route="/v1/rewards",status="200"')
    run_python(code, layout)
    # one request per step: the step's two groups of four, together
    assert metric(server.client, "wsdm_requests_total", 'route="/v1/rewards",status="200"') == before + 2
    for frame in logged_steps(layout / "sub" / "grpo-http"):
        assert len(frame) == 8 and isinstance(frame["prompt"].iloc[0], str)  # plain text
        assert_service_agrees(server.client, frame, "round-robin")


def test_the_python_example_runs_as_written(layout):
    printed = run_python(blocks("python", "score_groups", "Judge.from_pretrained", without="GRPO"), layout)
    lines = printed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["vs-reference"] * 2 + ["round-robin"] * 2


def test_the_curl_calls_answer_and_get_reward_is_vs_reference(server):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed here")
    answers = {}
    for route in ("/v1/rewards", "/get_reward"):
        command = blocks("bash", f"{URL}{route}").replace("\\\n", " ").replace(URL, server.url)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr
        answers[route] = json.loads(done.stdout)
    assert len(answers["/v1/rewards"]["results"][0]["rewards"]) == 3
    request = json.loads(re.search(r"-d '(.*?)'", blocks("bash", f"{URL}/get_reward"), flags=re.S).group(1))
    assert set(answers["/get_reward"]) == {"rewards", "scores"}
    group = {
        "prompt": "What is the capital of France?",
        "responses": ["Paris."],
        "reference": request["labels"][0],
    }
    expected = server.client.post("/v1/rewards", json={"groups": [group], "method": "vs-reference"}).json()
    assert answers["/get_reward"]["rewards"] == pytest.approx(expected["results"][0]["rewards"], abs=1e-6)


def test_the_verl_compute_score_calls_the_service(server, tmp_path):
    (tmp_path / "wsdm_reward.py").write_text(blocks("python", "def compute_score"))
    call = (
        "import wsdm_reward; print(wsdm_reward.compute_score('arena', 'Paris.', 'The capital of France is Paris.', "
        "{'question': 'What is the capital of France?', 'index': 0}))"
    )
    printed = run_python(call, tmp_path, WSDM_URL=server.url)
    pair = {"prompt": "What is the capital of France?", "response_a": "Paris.", "response_b": "The capital of France is Paris."}  # fmt: skip
    judged = server.client.post("/v1/judge", json={"pairs": [pair], "swap": "all"}).json()
    assert float(printed.stdout) == pytest.approx(judged["results"][0]["p_a"], abs=1e-6)


def test_the_pages_json_is_a_valid_request_and_answer():
    from wsdm_serve.server.reward_schema import RewardsResponse, parse_rewards_request

    (answer,) = (json.loads(block) for block in re.findall(r"^```json\n(.*?)^```$", PAGE, flags=re.M | re.S))
    RewardsResponse.model_validate(answer)
    body = re.search(r"-d '(.*?)'", blocks("bash", f"{URL}/v1/rewards"), flags=re.S).group(1)
    request, batch = parse_rewards_request(body.encode(), 256)
    assert len(batch.pairs) == answer["usage"]["pairs"] and len(request.groups) == len(answer["results"])
