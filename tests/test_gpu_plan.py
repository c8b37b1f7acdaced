"""GPU layout decisions (which GPUs, tensor/data parallel, dtype, context) on described GPUs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wsdm_serve.engines.gpu_plan import (
    GIB,
    GpuInfo,
    choose_dtype,
    choose_max_model_len,
    choose_tensor_parallel,
    detect_gpus,
    parse_gpu_list,
    parse_probe_output,
    physical_device_ids,
    plan_gpus,
    split_balanced,
    tensor_parallel_sizes,
)
from wsdm_serve.engines.settings import EngineSettings
from wsdm_serve.errors import WsdmError
from wsdm_serve.models.folder import read_model_config
from wsdm_serve.models.shape import (
    checkpoint_bytes,
    estimate_weight_bytes,
    kv_bytes_per_token,
    quantization_bits,
)
from wsdm_serve.tiny import QWEN25_14B_SHAPE

# Qwen2.5-14B-Instruct's config.json (the judge's shape).
QWEN25_14B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **QWEN25_14B_SHAPE}
GPTQ8 = {
    "quant_method": "gptq",
    "bits": 8,
    "group_size": 128,
    "desc_act": False,
    "sym": True,
}
QWEN25_14B_GPTQ8 = {**QWEN25_14B, "quantization_config": GPTQ8}


def gpus(count: int, name: str, gib: float, capability: tuple[int, int]) -> list[GpuInfo]:
    return [GpuInfo(i, name, int(gib * GIB), capability) for i in range(count)]


H100 = gpus(1, "NVIDIA H100 80GB HBM3", 79.1, (9, 0))
T4X2 = gpus(2, "Tesla T4", 14.74, (7, 5))
L4X4 = gpus(4, "NVIDIA L4", 22.03, (8, 9))
RTX4090X4 = gpus(4, "NVIDIA GeForce RTX 4090", 23.6, (8, 9))
A100_40X3 = gpus(3, "NVIDIA A100-SXM4-40GB", 39.4, (8, 0))
H100X8 = gpus(8, "NVIDIA H100 80GB HBM3", 79.1, (9, 0))


# ----------------------------------------------------------------------------- sizes
def test_weight_estimate_matches_vllm_measured_memory_of_the_14b_judge():
    # vLLM reported 27.6 GiB (bf16) and 15.7 GiB (GPTQ 8-bit g128) of weights for this shape on an H100.
    bf16 = estimate_weight_bytes(QWEN25_14B, "bfloat16") / GIB
    gptq8 = estimate_weight_bytes(QWEN25_14B_GPTQ8, "float16") / GIB
    assert bf16 == pytest.approx(27.6, rel=0.03)
    assert gptq8 == pytest.approx(15.7, rel=0.03)


def test_weight_estimate_matches_a_real_checkpoint_on_disk(tmp_path):
    """The formula against the bytes transformers writes for a small dense Qwen2 (float32)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    on_disk = checkpoint_bytes(tmp_path)
    estimate = estimate_weight_bytes(read_model_config(tmp_path), "float32")
    assert estimate == pytest.approx(on_disk, rel=0.01)


def test_kv_cache_per_token_of_the_14b_judge():
    # 2 (K and V) x 48 layers x 8 KV heads x 128 dims x 2 bytes
    assert kv_bytes_per_token(QWEN25_14B, "bfloat16") == 196_608
    assert kv_bytes_per_token(QWEN25_14B, "float32") == 2 * 196_608


@pytest.mark.parametrize(
    ("quant", "expected"),
    [
        (None, None),
        (GPTQ8, (8, 128)),
        ({"quant_method": "gptq", "bits": 4, "group_size": -1}, (4, 0)),
        ({"quant_method": "awq", "w_bit": 4, "q_group_size": 128}, (4, 128)),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {"group_0": {"weights": {"num_bits": 8, "group_size": 128}}},
            },
            (8, 128),
        ),
        ({"quant_method": "fp8"}, (8, 0)),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, (4, 64)),
        ({"quant_method": "something-new"}, (16, 0)),
    ],
)
def test_quantization_bits_read_from_the_checkpoint(quant, expected):
    config = dict(QWEN25_14B)
    if quant is not None:
        config["quantization_config"] = quant
    assert quantization_bits(config) == expected


def test_unknown_architectures_are_not_guessed():
    assert estimate_weight_bytes({"model_type": "mystery"}, "bfloat16") is None
    moe = {**QWEN25_14B, "num_experts": 64}
    assert estimate_weight_bytes(moe, "bfloat16") is None


def test_checkpoint_bytes_sums_weight_files(tmp_path):
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x" * 300)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"x" * 200)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 999)
    assert checkpoint_bytes(tmp_path) == 500
    assert checkpoint_bytes(tmp_path / "missing") is None


def test_read_model_config_errors_name_the_file(tmp_path):
    with pytest.raises(WsdmError, match="no config.json"):
        read_model_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(WsdmError, match=r"config\.json: not valid JSON"):
        read_model_config(tmp_path)


# -------------------------------------------------------------------------------- GPUs
def test_gpu_list_defaults_to_every_visible_gpu_and_keeps_the_given_order():
    assert parse_gpu_list(None, L4X4) == L4X4
    assert parse_gpu_list("all", L4X4) == L4X4
    assert [gpu.index for gpu in parse_gpu_list("3, 1", L4X4)] == [3, 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,x", "'x' is not a GPU number"),
        ("0,7", "GPU 7 is not visible"),
        ("1,1", "GPU 1 is listed twice"),
        ("-1", "is not a GPU number"),
    ],
)
def test_bad_gpu_lists_are_one_line_errors(text, message):
    with pytest.raises(WsdmError, match=message):
        parse_gpu_list(text, L4X4)


def test_no_visible_gpu_is_a_clear_error():
    with pytest.raises(WsdmError, match="no CUDA GPU is visible"):
        parse_gpu_list(None, [])


def test_physical_ids_follow_an_existing_cuda_visible_devices():
    assert physical_device_ids([0, 1], None) == "0,1"
    assert physical_device_ids([1], "") == "1"
    assert physical_device_ids([1], "4,6") == "6"
    assert physical_device_ids([0, 1], "GPU-aaa, GPU-bbb") == "GPU-aaa,GPU-bbb"
    with pytest.raises(WsdmError, match="GPU 2 is not among CUDA_VISIBLE_DEVICES=4,6"):
        physical_device_ids([2], "4,6")


def test_probe_output_parsing():
    line = json.dumps([{"index": 0, "name": "Tesla T4", "total_memory": 15828320256, "capability": [7, 5]}])
    assert parse_probe_output(f"noise\nWSDM_GPUS {line}\n") == [GpuInfo(0, "Tesla T4", 15828320256, (7, 5))]
    assert parse_probe_output("WSDM_GPUS []") == []
    assert parse_probe_output("WSDM_GPUS {broken") == []
    assert parse_probe_output("") == []


def test_detect_gpus_on_this_machine_agrees_with_torch():
    """The real probe (a child process) against torch in another child: same count of GPUs."""
    count = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert len(detect_gpus()) == int(count)


# ------------------------------------------------------------------------------- dtype
def test_dtype_auto_is_bf16_only_where_every_gpu_has_it():
    assert choose_dtype("auto", H100) == "bfloat16"
    assert choose_dtype("auto", T4X2) == "float16"
    assert choose_dtype("auto", [H100[0], T4X2[1]]) == "float16"
    assert choose_dtype("float16", H100) == "float16"
    assert choose_dtype("float32", T4X2) == "float32"


def test_bf16_on_a_gpu_without_it_is_refused():
    with pytest.raises(WsdmError, match=r"Tesla T4.*has no bfloat16.*--dtype float16"):
        choose_dtype("bfloat16", T4X2)


# ------------------------------------------------------------------------ max_model_len
def test_max_model_len_defaults_to_longest_prompt_plus_one():
    assert choose_max_model_len(10_245, None, QWEN25_14B) == 10_246
    assert choose_max_model_len(10_245, 16_384, QWEN25_14B) == 16_384


def test_max_model_len_too_small_or_beyond_the_model_is_refused():
    with pytest.raises(WsdmError, match="longest prompt has 10245 tokens and needs at least 10246"):
        choose_max_model_len(10_245, 10_245, QWEN25_14B)
    with pytest.raises(WsdmError, match="exceeds the model's context of 32768"):
        choose_max_model_len(40_000, None, QWEN25_14B)
    with pytest.raises(WsdmError, match="--max-model-len 40000 exceeds"):
        choose_max_model_len(100, 40_000, QWEN25_14B)


# ------------------------------------------------------------------- tensor / data parallel
def test_tensor_parallel_sizes_respect_attention_heads():
    # 40 heads, 8 KV heads: 3 does not divide 40; 5 divides 40 but neither splits nor replicates 8 KV heads.
    assert tensor_parallel_sizes(QWEN25_14B, 8) == [1, 2, 4, 8]


def test_one_h100_runs_the_14b_judge_alone():
    plan = plan_gpus(QWEN25_14B, H100, longest_prompt=10_300)
    assert (plan.tensor_parallel, plan.groups, plan.dtype) == (1, [[0]], "bfloat16")
    assert plan.max_model_len == 10_301


def test_two_t4_need_tensor_parallel_2_for_gptq8_in_fp16_like_the_reference():
    plan = plan_gpus(QWEN25_14B_GPTQ8, T4X2, longest_prompt=10_300)
    assert (plan.tensor_parallel, plan.groups, plan.dtype) == (2, [[0, 1]], "float16")


def test_bf16_14b_does_not_fit_two_t4_and_the_error_says_why():
    with pytest.raises(WsdmError, match=r"does not fit: even tensor-parallel 2 needs ~\d+\.\d GiB per GPU"):
        plan_gpus(QWEN25_14B, T4X2, longest_prompt=10_300)


def test_one_t4_is_too_small_even_at_8_bit():
    with pytest.raises(WsdmError, match="does not fit"):
        plan_gpus(QWEN25_14B_GPTQ8, T4X2, longest_prompt=10_300, settings=EngineSettings(gpus="0"))


def test_four_l4_run_two_engines_of_two_gpus():
    plan = plan_gpus(QWEN25_14B, L4X4, longest_prompt=10_300)
    assert (plan.tensor_parallel, plan.groups) == (2, [[0, 1], [2, 3]])
    assert plan.data_parallel == 2


def test_quantized_14b_fits_one_24_gb_gpu_so_four_engines_run():
    plan = plan_gpus(QWEN25_14B_GPTQ8, RTX4090X4, longest_prompt=10_300)
    assert (plan.tensor_parallel, plan.groups) == (1, [[0], [1], [2], [3]])


def test_eight_h100_run_eight_engines():
    plan = plan_gpus(QWEN25_14B, H100X8, longest_prompt=10_300)
    assert plan.tensor_parallel == 1 and plan.data_parallel == 8


def test_engines_caps_the_data_parallel_engines_and_is_checked():
    plan = plan_gpus(QWEN25_14B, H100X8, longest_prompt=10_300, settings=EngineSettings(engines=3))
    assert plan.groups == [[0], [1], [2]]
    assert plan.notes == ["GPU(s) 3,4,5,6,7 left idle: --engines 3"]
    with pytest.raises(WsdmError, match=r"--engines 3: 4 GPU\(s\) in groups of 2 \(tensor-parallel\) hold 2"):
        plan_gpus(QWEN25_14B, L4X4, longest_prompt=10_300, settings=EngineSettings(engines=3))


def test_a_long_context_can_push_the_model_to_more_gpus():
    # 39.4 GiB A100s hold the bf16 weights plus a 10k-token KV cache, not plus a 32k one.
    assert plan_gpus(QWEN25_14B, A100_40X3, longest_prompt=10_300).tensor_parallel == 1
    plan = plan_gpus(QWEN25_14B, A100_40X3[:2], longest_prompt=32_000)
    assert plan.tensor_parallel == 2


def test_explicit_tensor_parallel_is_validated_and_leftover_gpus_are_reported():
    plan = plan_gpus(QWEN25_14B, A100_40X3, longest_prompt=1000, settings=EngineSettings(tensor_parallel=2))
    assert plan.groups == [[0, 1]]
    assert plan.notes == ["GPU(s) 2 left idle: 3 GPUs do not divide into groups of 2"]
    with pytest.raises(WsdmError, match="--tensor-parallel 3: the model's 40 attention heads"):
        plan_gpus(QWEN25_14B, A100_40X3, longest_prompt=1000, settings=EngineSettings(tensor_parallel=3))
    with pytest.raises(WsdmError, match="--tensor-parallel 4: only 3 GPU"):
        plan_gpus(QWEN25_14B, A100_40X3, longest_prompt=1000, settings=EngineSettings(tensor_parallel=4))


def test_gpu_memory_utilization_changes_the_choice_and_is_range_checked():
    # A 14B GPTQ-8 on two T4 fits at the reference's 0.99, not at 0.6.
    assert (
        plan_gpus(
            QWEN25_14B_GPTQ8,
            T4X2,
            longest_prompt=10_300,
            settings=EngineSettings(gpu_memory_utilization=0.99),
        ).tensor_parallel
        == 2
    )
    with pytest.raises(WsdmError, match="does not fit"):
        plan_gpus(
            QWEN25_14B_GPTQ8, T4X2, longest_prompt=10_300, settings=EngineSettings(gpu_memory_utilization=0.6)
        )
    with pytest.raises(WsdmError, match="--gpu-memory-utilization 1.5"):
        plan_gpus(QWEN25_14B, H100, longest_prompt=100, settings=EngineSettings(gpu_memory_utilization=1.5))


def test_unknown_size_needs_an_explicit_tensor_parallel_on_several_gpus():
    config = {"model_type": "mystery", "max_position_embeddings": 4096}
    assert plan_gpus(config, H100, longest_prompt=100).tensor_parallel == 1
    with pytest.raises(WsdmError, match="pass --tensor-parallel N"):
        plan_gpus(config, L4X4, longest_prompt=100)
    plan = plan_gpus(config, L4X4, longest_prompt=100, fallback_weight_bytes=30 * GIB)
    assert plan.tensor_parallel == 2


def test_choose_tensor_parallel_uses_the_smallest_gpu_of_a_mixed_set():
    mixed = [GpuInfo(0, "A100 80GB", 79 * GIB, (8, 0)), GpuInfo(1, "A10", 22 * GIB, (8, 6))]
    weights = estimate_weight_bytes(QWEN25_14B, "bfloat16")
    assert choose_tensor_parallel(QWEN25_14B, mixed, weights, 0, 0.9) == 2


# ------------------------------------------------------------------------ splitting rows
def test_split_balanced_gives_every_row_once_with_even_token_totals():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(200, 10_000) for _ in range(1001)]
    parts = split_balanced(lengths, 3)
    assert sorted(i for part in parts for i in part) == list(range(1001))
    totals = [sum(lengths[i] for i in part) for part in parts]
    assert max(totals) - min(totals) <= max(lengths)
    assert all(part == sorted(part) for part in parts)


def test_split_balanced_with_more_engines_than_rows():
    assert split_balanced([5, 9], 4) == [[1], [0], [], []]
    assert split_balanced([], 2) == [[], []]
