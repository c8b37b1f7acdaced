"""CPU layout decisions for vLLM's CPU build (cores per rank and engine, KV cache, dtype, refusals)
on hand-written machines, and the reading of a real one."""

from __future__ import annotations

import os

import pytest

from wsdm_serve.engines.cpu_machine import GIB, CpuMachine, detect_machine, format_core_list, parse_core_list
from wsdm_serve.engines.cpu_plan import DEFAULT_KV_CACHE_BYTES, assign_cores, engine_memory, plan_cpus
from wsdm_serve.errors import WsdmError
from wsdm_serve.models.precision import checkpoint_kind
from wsdm_serve.models.shape import estimate_weight_bytes
from wsdm_serve.tiny import QWEN25_14B_SHAPE

QWEN25_14B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **QWEN25_14B_SHAPE}
GPTQ = {"quant_method": "gptq", "group_size": 128, "desc_act": False, "sym": True}
QWEN25_14B_GPTQ8 = {**QWEN25_14B, "quantization_config": {**GPTQ, "bits": 8}}
QWEN25_14B_GPTQ4 = {**QWEN25_14B, "quantization_config": {**GPTQ, "bits": 4}}
FP8_SCHEME = {"weights": {"type": "float", "num_bits": 8, "strategy": "channel"}}
QWEN25_14B_FP8 = {
    **QWEN25_14B,
    "quantization_config": {"quant_method": "compressed-tensors", "config_groups": {"group_0": FP8_SCHEME}},
}
# The tests' tiny judge with head size 32 (hidden 128, 4 heads), and the older one with head size 16.
TINY = {
    "architectures": ["Qwen2ForCausalLM"],
    "vocab_size": 151936,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
}
TINY_HD16 = {**TINY, "hidden_size": 64}

AVX512_AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
CI = CpuMachine(
    cores=(0, 1), numa_nodes=((0, 1),), free_memory=20 * GIB, total_memory=24 * GIB, flags=AVX512_AMX
)
TWO_SOCKETS = CpuMachine(
    cores=tuple(range(56)),
    numa_nodes=(tuple(range(28)), tuple(range(28, 56))),
    free_memory=240 * GIB,
    total_memory=256 * GIB,
    flags=AVX512_AMX,
)


def plan(config=TINY, machine=CI, **options):
    options.setdefault("longest_prompt", 2048)
    options.setdefault("kind", checkpoint_kind(config))
    return plan_cpus(config, machine, **options)


# --------------------------------------------------------------------------- core lists
def test_core_lists_read_and_write_the_kernel_format():
    assert parse_core_list("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_core_list(" 5 ") == [5]
    assert format_core_list([8, 0, 1, 2, 3]) == "0-3,8"
    assert format_core_list([1, 3, 4]) == "1,3-4"
    assert parse_core_list(format_core_list([0, 2, 3, 4, 9])) == [0, 2, 3, 4, 9]


@pytest.mark.parametrize("text, message", [("a-3", "not a core"), ("3-1", "backwards"), ("0,0", "twice")])
def test_bad_core_lists_are_one_line_errors(text, message):
    with pytest.raises(WsdmError, match=message):
        parse_core_list(text)


# --------------------------------------------------------------------------- layouts
def test_the_ci_machine_runs_one_engine_with_a_single_threaded_rank_per_core():
    result = plan()
    assert result.engines == (((0,), (1,)),)
    assert result.environment(0) == {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    assert result.dtype == "float32" and result.max_model_len == 2049
    assert result.kv_cache_bytes == DEFAULT_KV_CACHE_BYTES // 2  # the ranks share the engine's heads
    assert result.engine_arguments() == {
        "tensor_parallel_size": 2,
        "dtype": "float32",
        "max_model_len": 2049,
        "kv_cache_memory_bytes": DEFAULT_KV_CACHE_BYTES // 2,
    }
    assert result.notes == []
    assert result.describe().startswith("1 engine(s) x tensor-parallel 2 on cores [0|1], float32")
    # Heads that do not split in two: one single-threaded engine per core instead.
    odd = plan({**TINY, "num_attention_heads": 3, "num_key_value_heads": 1, "hidden_size": 96})
    assert odd.engines == (((0,),), ((1,),))
    # Asked for one rank per engine: as many engines as ranks.
    assert plan(tensor_parallel=1).engines == (((0,),), ((1,),))


def test_one_engine_on_the_ci_machine_takes_both_cores_as_two_ranks():
    """One engine (a server's) gets the two single-threaded ranks the node holds; asked for one rank,
    it runs two threads on both cores."""
    result = plan(engines=1)
    assert result.engines == (((0,), (1,)),) and result.binding(0) == "0|1"
    single = plan(engines=1, tensor_parallel=1)
    assert single.engines == (((0, 1),),) and single.binding(0) == "0-1"
    odd_heads = plan(
        {**TINY, "num_attention_heads": 3, "num_key_value_heads": 1, "hidden_size": 96}, engines=1
    )
    assert odd_heads.tensor_parallel == 1  # 3 heads do not split in two


def test_tensor_parallel_two_binds_one_core_per_rank():
    result = plan(tensor_parallel=2)
    assert result.binding(0) == "0|1"
    assert result.kv_cache_bytes == DEFAULT_KV_CACHE_BYTES // 2  # the ranks share the engine's heads
    assert "tensor-parallel 2 on cores [0|1]" in result.describe()


def test_two_sockets_run_one_engine_per_numa_node_with_a_core_left_to_the_scheduler():
    result = plan(QWEN25_14B_GPTQ4, TWO_SOCKETS)
    assert [result.binding(e) for e in range(2)] == ["0-26", "28-54"]
    assert result.dtype == "bfloat16"  # 4-bit kernels compute in bf16
    tensor_parallel = plan(QWEN25_14B_GPTQ4, TWO_SOCKETS, tensor_parallel=2)
    assert tensor_parallel.engines == ((tuple(range(27)), tuple(range(28, 55))),)
    assert tensor_parallel.binding(0) == "0-26|28-54"
    four = plan(QWEN25_14B_GPTQ4, TWO_SOCKETS, engines=4)
    assert [four.binding(e) for e in range(4)] == ["0-12", "13-25", "28-40", "41-53"]


def test_ranks_never_straddle_numa_nodes_when_each_node_holds_whole_ranks():
    nodes = [tuple(range(8)), tuple(range(8, 16))]
    layout = assign_cores(nodes, tensor_parallel=2, engines=2)
    assert layout == (((0, 1, 2, 3), (4, 5, 6, 7)), ((8, 9, 10, 11), (12, 13, 14, 15)))
    # Three engines cannot split two nodes evenly: consecutive equal slices, one core idle.
    odd = assign_cores(nodes, tensor_parallel=1, engines=3)
    assert odd == (((0, 1, 2, 3, 4),), ((5, 6, 7, 8, 9),), ((10, 11, 12, 13, 14),))


def test_idle_cores_are_noted():
    five = CpuMachine(
        cores=tuple(range(5)), numa_nodes=(tuple(range(5)),), free_memory=20 * GIB, total_memory=24 * GIB
    )
    result = plan(machine=five, engines=3)
    assert [result.binding(e) for e in range(3)] == ["0", "1", "2"]  # core 4 is the scheduler's
    assert result.notes == ["1 core(s) left idle: 4 cores do not divide into 3 equal ranks"]


def test_cpus_restricts_the_cores():
    result = plan(machine=TWO_SOCKETS, cpus="0-3")
    assert result.engines == (((0, 1, 2),),)
    assert plan(machine=TWO_SOCKETS, cpus="8,9").engines == (((8,), (9,)),)
    with pytest.raises(
        WsdmError, match=r"--cpus 0-60: core 56 is not available to this process \(allowed: 0-55\)"
    ):
        plan(machine=TWO_SOCKETS, cpus="0-60")


def test_a_machine_without_numa_information_is_one_node():
    flat = CpuMachine(cores=(0, 1, 2, 3), free_memory=20 * GIB, total_memory=24 * GIB)
    assert plan(machine=flat).engines == (((0, 1, 2),),)


# --------------------------------------------------------------------------- memory
def test_memory_caps_the_number_of_engines_with_a_note():
    tight = CpuMachine(
        cores=tuple(range(56)),
        numa_nodes=TWO_SOCKETS.numa_nodes,
        free_memory=24 * GIB,
        total_memory=32 * GIB,
    )
    result = plan(QWEN25_14B_GPTQ4, tight)
    assert result.data_parallel == 1
    assert result.notes and result.notes[0].startswith("1 engine(s) instead of 2: each holds ~")
    with pytest.raises(WsdmError, match=r"--engines 2: each engine needs ~.* GiB are free: at most 1"):
        plan(QWEN25_14B_GPTQ4, tight, engines=2)


def test_the_default_kv_cache_shrinks_to_what_is_free_but_not_below_one_prompt():
    weights_only = engine_memory(estimate_weight_bytes(QWEN25_14B_GPTQ4, "bfloat16"), 1, 0)
    machine = CpuMachine(
        cores=(0, 1), free_memory=int((weights_only + 0.5 * GIB) / 0.9), total_memory=64 * GIB
    )
    result = plan(QWEN25_14B_GPTQ4, machine)
    assert result.tensor_parallel == 1  # a second rank's process does not fit; one rank does
    assert 0.3 * GIB < result.kv_cache_bytes < DEFAULT_KV_CACHE_BYTES
    assert result.memory_per_engine <= machine.free_memory * 0.9


def test_a_model_that_does_not_fit_is_refused_with_what_to_do():
    with pytest.raises(
        WsdmError, match=r"not enough memory: one engine needs ~.* GiB .* use a quantized checkpoint"
    ):
        plan(QWEN25_14B, CI)


def test_a_kv_cache_below_one_prompt_is_refused():
    with pytest.raises(
        WsdmError, match=r"--kv-cache-gib 0.1: one prompt of 2049 tokens needs 0.38 GiB per rank"
    ):
        plan(QWEN25_14B_GPTQ4, TWO_SOCKETS, kv_cache_gib=0.1)
    assert plan(TINY, CI, kv_cache_gib=0.25).kv_cache_bytes == GIB // 4


# --------------------------------------------------------------------------- refusals
def test_8bit_gptq_is_refused_with_the_conversion_command():
    with pytest.raises(WsdmError) as caught:
        plan(QWEN25_14B_GPTQ8, TWO_SOCKETS)
    message = str(caught.value)
    assert message.startswith(
        "8-bit integer weights (GPTQ/compressed-tensors): vLLM's CPU build has kernels for 4-bit"
    )
    assert "wsdm-serve convert MODEL --to bf16 --out MODEL-bf16" in message and "\n" not in message


def test_fp8_checkpoints_and_online_fp8_are_refused():
    assert checkpoint_kind(QWEN25_14B_FP8) == "fp8"
    with pytest.raises(WsdmError, match=r"^FP8 checkpoint: .*--to bf16"):
        plan(QWEN25_14B_FP8, TWO_SOCKETS)
    with pytest.raises(WsdmError, match=r"^--precision fp8 needs FP8 tensor cores"):
        plan(QWEN25_14B, TWO_SOCKETS, precision="fp8")


def test_head_sizes_the_cpu_attention_lacks_are_refused():
    with pytest.raises(
        WsdmError, match=r"^attention head size 16: vLLM's CPU attention implements head sizes 32, 64"
    ):
        plan(TINY_HD16)


def test_tensor_parallel_beyond_the_cores_or_the_heads_is_refused():
    with pytest.raises(WsdmError, match=r"--tensor-parallel 3: only 2 core\(s\) chosen"):
        plan(tensor_parallel=3)
    with pytest.raises(WsdmError, match=r"--tensor-parallel 3: the model's 4 attention heads / 2 KV heads"):
        plan(machine=TWO_SOCKETS, tensor_parallel=3)
    with pytest.raises(WsdmError, match=r"--engines 2 x --tensor-parallel 2 need 4 cores; 2 chosen"):
        plan(tensor_parallel=2, engines=2)


def test_dtypes():
    assert plan(dtype="bfloat16").dtype == "bfloat16"
    assert plan(QWEN25_14B_GPTQ4, TWO_SOCKETS).dtype == "bfloat16"
    with pytest.raises(WsdmError, match=r"--dtype float32: vLLM's CPU kernel for 4-bit weights"):
        plan(QWEN25_14B_GPTQ4, TWO_SOCKETS, dtype="float32")
    with pytest.raises(WsdmError, match=r"--dtype int8: choose one of auto, bfloat16, float16, float32"):
        plan(dtype="int8")


def test_max_model_len_follows_the_gpu_plan_rules():
    assert plan(max_model_len=4096).max_model_len == 4096
    with pytest.raises(WsdmError, match=r"--max-model-len 100: the longest prompt has 2048 tokens"):
        plan(max_model_len=100)


# --------------------------------------------------------------------------- the real machine
def test_the_real_machine_is_read_from_proc_and_sys():
    machine = detect_machine()
    assert machine.cores == tuple(sorted(os.sched_getaffinity(0)))
    assert 0 < machine.free_memory <= machine.total_memory
    assert all(set(node) <= set(machine.cores) for node in machine.nodes())


def test_a_described_machine_folder_is_read_with_its_cgroup_limit(tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal:       33554432 kB\nMemAvailable:   16777216 kB\n")
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16\n")
    node = tmp_path / "sys/devices/system/node/node0"
    node.mkdir(parents=True)
    (node / "cpulist").write_text(format_core_list(cores + [max(cores) + 1]) + "\n")  # one core not ours
    cgroup = tmp_path / "sys/fs/cgroup"
    cgroup.mkdir(parents=True)
    (cgroup / "memory.max").write_text(str(10 * GIB))
    (cgroup / "memory.current").write_text(str(2 * GIB))
    machine = detect_machine(tmp_path)
    assert machine.numa_nodes == (tuple(cores),)
    assert machine.total_memory == 32 * GIB and machine.free_memory == 8 * GIB
    assert machine.native_bf16 and "amx_bf16" in machine.describe()
