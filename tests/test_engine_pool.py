"""Data-parallel pool: real worker processes, real queues, real engines on a CPU."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ARENA_SAMPLE
from wsdm_serve.engines.pool import EnginePool, WorkerSpec, pack, unpack
from wsdm_serve.engines.settings import EngineSettings
from wsdm_serve.errors import WsdmError


def test_pack_round_trip():
    sequences = [[1, 2, 3], [], [151_643], list(range(1000))]
    assert unpack(*pack(sequences)) == sequences


def test_pool_splits_rows_sets_devices_reports_progress_and_keeps_input_order():
    sequences = [[i] * (i % 7 + 1) for i in range(40)]
    specs = [
        WorkerSpec("tests.pool_helpers:EchoEngine", environment={"CUDA_VISIBLE_DEVICES": "3"}, label="GPU 3"),
        WorkerSpec("tests.pool_helpers:EchoEngine", environment={"CUDA_VISIBLE_DEVICES": "5"}, label="GPU 5"),
    ]
    reported = []
    pool = EnginePool(specs)
    try:
        result = pool.score(sequences, lambda rows, tokens: reported.append((rows, tokens)))
        again = pool.score(sequences[:3])
    finally:
        pool.close()
    assert result[:, 0].tolist() == [float(sum(seq)) for seq in sequences]
    devices = result[:, 1]
    assert set(devices.tolist()) == {3.0, 5.0}
    tokens_per_device = {
        d: sum(len(s) for s, x in zip(sequences, devices, strict=True) if x == d) for d in (3.0, 5.0)
    }
    assert abs(tokens_per_device[3.0] - tokens_per_device[5.0]) <= 7
    assert sum(rows for rows, _ in reported) == len(sequences)
    assert sum(tokens for _, tokens in reported) == sum(len(s) for s in sequences)
    assert again[:, 0].tolist() == [float(sum(seq)) for seq in sequences[:3]]
    assert not any(process.is_alive() for process in pool._processes)


def test_pool_of_transformers_engines_matches_one_engine(tiny_model_dir, tokenizer):
    from wsdm_serve.data import load_arena_rows
    from wsdm_serve.engines.hf import HFEngine
    from wsdm_serve.preprocess import build_prompts
    from wsdm_serve.prompt import letter_token_ids
    from wsdm_serve.truncation import TruncationConfig

    rows = load_arena_rows(ARENA_SAMPLE)
    prompts = build_prompts(rows, tokenizer, TruncationConfig(token_budget=600), progress=False)
    sequences = prompts.token_ids[:10]
    letters = letter_token_ids(tokenizer)
    kwargs = {
        "model": str(tiny_model_dir),
        "letter_ids": letters,
        "settings": EngineSettings(name="hf", device="cpu"),
    }
    with HFEngine(**kwargs) as engine:
        expected = engine.score(sequences)
    specs = [WorkerSpec("wsdm_serve.engines.hf:HFEngine", kwargs, label=f"worker {i}") for i in range(2)]
    with EnginePool(specs) as pool:
        result = pool.score(sequences)
    np.testing.assert_allclose(result, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("build", r"^GPU 0: no GPU memory left for the KV cache$"),
        ("die", r"^GPU 0: engine process exited unexpectedly \(exit code 7\)$"),
    ],
)
def test_a_worker_that_cannot_start_is_one_error_line(when, message):
    spec = WorkerSpec("tests.pool_helpers:FailingEngine", {"when": when}, label="GPU 0")
    with pytest.raises(WsdmError, match=message):
        EnginePool([spec, WorkerSpec("tests.pool_helpers:EchoEngine", label="GPU 1")])


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("raise-while-scoring", r"^GPU 0: kernel launch failed$"),
        ("die-while-scoring", r"^GPU 0: engine process exited unexpectedly \(exit code 9\)$"),
    ],
)
def test_a_worker_that_fails_while_scoring_stops_the_pool(when, message):
    pool = EnginePool([WorkerSpec("tests.pool_helpers:FailingEngine", {"when": when}, label="GPU 0")])
    with pytest.raises(WsdmError, match=message):
        pool.score([[1, 2, 3]])
    assert not any(process.is_alive() for process in pool._processes)
    with pytest.raises(WsdmError, match="closed"):
        pool.score([[1]])


def test_hf_engine_wraps_a_model_already_in_memory(tiny_model_dir):
    """The seam the benchmark uses for 14B random weights built on the GPU."""
    from transformers import AutoModelForCausalLM

    from wsdm_serve.engines.hf import HFEngine

    sequences = [[151644, 8948, 198, 2610, 525, 32], [151644, 872, 33, 13, 220]]
    with HFEngine(tiny_model_dir, (32, 33), EngineSettings(name="hf", device="cpu")) as loaded:
        expected = loaded.score(sequences)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with HFEngine.from_model(model, (32, 33)) as wrapped:
        assert (wrapped.device, wrapped.batch_tokens) == ("cpu", 8192)
        np.testing.assert_array_equal(wrapped.score(sequences), expected)
