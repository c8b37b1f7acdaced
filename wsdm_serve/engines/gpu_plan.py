"""How a model is spread over GPUs: which GPUs, tensor-parallel size, data-parallel groups, dtype, context.

Everything here is plain arithmetic on a model's config.json and a list of GPU descriptions, so it is
unit-tested on a CPU with hand-written GPUs. The one function that looks at real hardware,
:func:`detect_gpus`, asks a short-lived child process: querying CUDA in this process would fix its
set of visible devices before an engine has chosen which ones it wants.

Tensor parallelism exists to make a model fit; data parallelism (one engine per group of GPUs) is
what adds throughput on a prefill-only workload, so the plan takes the smallest tensor-parallel size
that fits and runs one engine per group of that size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import WsdmError

GIB = 1024**3
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
RESERVE_BYTES = int(2.5 * GIB)
"""Per-GPU memory kept for what is neither weights nor KV cache: the CUDA context, cuBLAS and NCCL
workspaces and the activations of one prefill step (vLLM profiles them at start; on a 14B model with
16k batched tokens they peak near 2 GiB)."""

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device as this process numbers it (after CUDA_VISIBLE_DEVICES)."""

    index: int
    name: str
    total_memory: int
    capability: tuple[int, int]

    @property
    def has_bf16(self) -> bool:
        return self.capability >= (8, 0)

    @property
    def has_fp8(self) -> bool:
        """FP8 tensor cores: Ada (8.9), Hopper (9.0) and newer."""
        return self.capability >= (8, 9)

    def describe(self) -> str:
        return f"GPU {self.index} ({self.name}, {self.total_memory / GIB:.0f} GiB, sm_{self.capability[0]}{self.capability[1]})"


@dataclass(frozen=True)
class GpuPlan:
    """The decided layout: ``groups`` of GPU ordinals, one engine per group, ``tensor_parallel`` each."""

    groups: list[list[int]]
    tensor_parallel: int
    dtype: str
    max_model_len: int
    gpu_memory_utilization: float
    weight_bytes: int | None
    notes: list[str] = field(default_factory=list)
    fp8: bool = False

    @property
    def data_parallel(self) -> int:
        return len(self.groups)

    def describe(self) -> str:
        groups = " ".join("[" + ",".join(map(str, group)) + "]" for group in self.groups)
        weights = f", ~{self.weight_bytes / GIB:.1f} GiB of weights" if self.weight_bytes else ""
        return (
            f"{self.data_parallel} engine(s) x tensor-parallel {self.tensor_parallel} on GPUs {groups}, "
            f"{self.dtype}{' with FP8 weights' if self.fp8 else ''}, max_model_len {self.max_model_len}{weights}"
        )


# ----------------------------------------------------------------------------------------- GPUs
def parse_gpu_list(text: str | None, visible: Sequence[GpuInfo]) -> list[GpuInfo]:
    """``--gpus 0,1`` -> those GPUs, in the order given; ``None``, ``""`` or ``all`` -> every visible GPU."""
    if not visible:
        raise WsdmError("no CUDA GPU is visible; the vllm engine needs one (use --engine hf on a CPU)")
    if text is None or text.strip().lower() in ("", "all"):
        return list(visible)
    by_index = {gpu.index: gpu for gpu in visible}
    chosen: list[GpuInfo] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise WsdmError(f"--gpus {text}: {part!r} is not a GPU number; expected e.g. 0,1")
        index = int(part)
        if index not in by_index:
            shown = ",".join(str(gpu.index) for gpu in visible)
            raise WsdmError(f"--gpus {text}: GPU {index} is not visible (visible: {shown})")
        if any(gpu.index == index for gpu in chosen):
            raise WsdmError(f"--gpus {text}: GPU {index} is listed twice")
        chosen.append(by_index[index])
    return chosen


def physical_device_ids(ordinals: Sequence[int], cuda_visible_devices: str | None) -> str:
    """The CUDA_VISIBLE_DEVICES value that shows a child process exactly ``ordinals``.

    Ordinals count the devices this process sees; when CUDA_VISIBLE_DEVICES is already set (to
    numbers or GPU UUIDs) they index into that list, so a child must get the listed entries, not the
    ordinals themselves.
    """
    if cuda_visible_devices is None or not cuda_visible_devices.strip():
        return ",".join(str(ordinal) for ordinal in ordinals)
    entries = [entry.strip() for entry in cuda_visible_devices.split(",") if entry.strip()]
    missing = [ordinal for ordinal in ordinals if ordinal >= len(entries)]
    if missing:
        raise WsdmError(
            f"GPU {missing[0]} is not among CUDA_VISIBLE_DEVICES={cuda_visible_devices} ({len(entries)} listed)"
        )
    return ",".join(entries[ordinal] for ordinal in ordinals)


_PROBE = """
import json, torch
gpus = []
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"index": i, "name": p.name, "total_memory": p.total_memory, "capability": [p.major, p.minor]})
print("WSDM_GPUS " + json.dumps(gpus))
"""


def parse_probe_output(stdout: str) -> list[GpuInfo]:
    """GPU descriptions from the probe's marker line; anything unparsable means no usable GPU."""
    for line in stdout.splitlines():
        if line.startswith("WSDM_GPUS "):
            try:
                records = json.loads(line[len("WSDM_GPUS ") :])
                return [
                    GpuInfo(
                        index=int(r["index"]),
                        name=str(r["name"]),
                        total_memory=int(r["total_memory"]),
                        capability=(int(r["capability"][0]), int(r["capability"][1])),
                    )
                    for r in records
                ]
            except (ValueError, KeyError, TypeError, IndexError):
                return []
    return []


_DETECTED: list[GpuInfo] | None = None


def detect_gpus() -> list[GpuInfo]:
    """The CUDA GPUs a child process sees (honouring CUDA_VISIBLE_DEVICES); cached per process."""
    global _DETECTED
    if _DETECTED is None:
        try:
            completed = subprocess.run(
                [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=180, env=os.environ
            )
            _DETECTED = parse_probe_output(completed.stdout)
        except (OSError, subprocess.TimeoutExpired):
            _DETECTED = []
    return list(_DETECTED)


# ------------------------------------------------------------------------------- model config
def read_model_config(model_dir: str | Path) -> dict:
    """config.json of a model folder, with one-line errors for a missing or broken file."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise WsdmError(f"{model_dir}: no config.json; not a model folder") from None
    except json.JSONDecodeError as exc:
        raise WsdmError(f"{config_path}: not valid JSON ({exc.msg})") from exc
    if not isinstance(config, dict):
        raise WsdmError(f"{config_path}: expected a JSON object")
    return config


def text_config(config: dict) -> dict:
    """The language-model part of a config (multimodal configs nest it under ``text_config``)."""
    nested = config.get("text_config")
    return nested if isinstance(nested, dict) else config


def quantization_bits(config: dict) -> tuple[int, int] | None:
    """(bits, group_size) of a checkpoint's quantized linear weights, or None when unquantized.

    group_size 0 means one scale per output channel. Unknown methods count as 16 bits, which can
    only over-estimate memory.
    """
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return None
    method = str(quant.get("quant_method", "")).lower()
    if method in ("gptq", "awq", "gptq_marlin", "awq_marlin"):
        bits = int(quant.get("bits", quant.get("w_bit", 16)))
        group = int(quant.get("group_size", quant.get("q_group_size", -1)) or -1)
        return bits, max(group, 0)
    if method == "compressed-tensors":
        for scheme in (quant.get("config_groups") or {}).values():
            weights = (scheme or {}).get("weights") or {}
            if "num_bits" in weights:
                group = weights.get("group_size") or 0
                return int(weights["num_bits"]), int(group)
        return 16, 0
    if method in ("fp8", "fbgemm_fp8", "modelopt"):
        return 8, 0
    if method == "bitsandbytes":
        return (4, 64) if quant.get("load_in_4bit") else (8, 0)
    return 16, 0


def _layer_shapes(config: dict) -> dict[str, int] | None:
    cfg = text_config(config)
    needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    if any(not isinstance(cfg.get(key), int) for key in needed):
        return None
    if any(key in cfg for key in ("num_local_experts", "num_experts", "n_routed_experts")):
        return None  # mixture of experts: the dense formula below would be wrong
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return {
        "hidden": cfg["hidden_size"],
        "intermediate": cfg["intermediate_size"],
        "layers": cfg["num_hidden_layers"],
        "heads": heads,
        "kv_heads": cfg.get("num_key_value_heads") or heads,
        "head_dim": head_dim,
        "vocab": cfg["vocab_size"],
        "tied": bool(cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
    }


def estimate_weight_bytes(config: dict, dtype: str, fp8: bool = False) -> int | None:
    """Weight memory of a dense decoder from its config: linear layers at the checkpoint's quantized
    width (plus one 16-bit scale and one zero point per group), embeddings, head and norms in ``dtype``.
    ``fp8``: the linear layers of a full-precision checkpoint are quantized to FP8 at load (one byte each).

    None when the config does not describe a dense decoder this formula knows.
    """
    shapes = _layer_shapes(config)
    if shapes is None:
        return None
    h, f, n = shapes["hidden"], shapes["intermediate"], shapes["layers"]
    q_width = shapes["heads"] * shapes["head_dim"]
    kv_width = shapes["kv_heads"] * shapes["head_dim"]
    linear_params = n * (h * q_width * 2 + h * kv_width * 2 + 3 * h * f)
    embed_params = shapes["vocab"] * h * (1 if shapes["tied"] else 2)
    norm_params = n * 2 * h + h
    plain = DTYPE_BYTES.get(dtype, 2)
    quant = quantization_bits(config)
    if fp8 and quant is None:
        quant = (8, 0)
    if quant is None or quant[0] >= 16:
        linear_bytes = linear_params * plain
    else:
        bits, group = quant
        per_group = 2 + bits / 8  # a 16-bit scale and a packed zero point per group
        overhead = per_group / group if group else 0.0
        linear_bytes = linear_params * (bits / 8 + overhead)
    return int(linear_bytes + (embed_params + norm_params) * plain)


def checkpoint_bytes(model_dir: str | Path) -> int | None:
    """Size of the weight files on disk: the fallback estimate for architectures the formula skips."""
    model_dir = Path(model_dir)
    files = list(model_dir.glob("*.safetensors")) or list(model_dir.glob("*.bin"))
    return sum(path.stat().st_size for path in files) or None


def kv_bytes_per_token(config: dict, dtype: str) -> int:
    """Key and value cache of one token over all layers (what one long prompt needs in KV cache)."""
    shapes = _layer_shapes(config)
    if shapes is None:
        return 0
    return 2 * shapes["layers"] * shapes["kv_heads"] * shapes["head_dim"] * DTYPE_BYTES.get(dtype, 2)


# ------------------------------------------------------------------------------------ choices
def choose_dtype(requested: str, gpus: Sequence[GpuInfo]) -> str:
    """bf16 where every chosen GPU has it (compute capability 8.0+), fp16 otherwise (T4, V100).

    Qwen2.5 was trained in bf16 and can overflow in fp16, so bf16 is never given up where it exists.
    """
    if requested not in DTYPES:
        raise WsdmError(f"--dtype {requested}: choose one of {', '.join(DTYPES)}")
    if requested == "auto":
        return "bfloat16" if all(gpu.has_bf16 for gpu in gpus) else "float16"
    if requested == "bfloat16":
        lacking = [gpu for gpu in gpus if not gpu.has_bf16]
        if lacking:
            raise WsdmError(
                f"--dtype bfloat16: {lacking[0].describe()} has no bfloat16 (needs compute capability 8.0+); "
                "use --dtype float16 or auto"
            )
    return requested


def model_context_limit(config: dict) -> int | None:
    cfg = text_config(config)
    limit = cfg.get("max_position_embeddings")
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def choose_max_model_len(longest_prompt: int, requested: int | None, config: dict) -> int:
    """Longest prompt + 1 (room for the one scored token), as the reference did; forward and swapped
    prompts are both in ``longest_prompt``, so TTA never exceeds it."""
    if longest_prompt < 1:
        raise WsdmError("no prompt to score")
    needed = longest_prompt + 1
    value = needed if requested is None else requested
    if value < needed:
        raise WsdmError(
            f"--max-model-len {requested}: the longest prompt has {longest_prompt} tokens and needs at least {needed}"
        )
    limit = model_context_limit(config)
    if limit is not None and value > limit:
        what = (
            f"--max-model-len {requested}"
            if requested is not None
            else f"a prompt of {longest_prompt} tokens"
        )
        raise WsdmError(
            f"{what} exceeds the model's context of {limit} tokens; lower --token-budget or --max-model-len"
        )
    return value


def tensor_parallel_sizes(config: dict, n_gpus: int) -> list[int]:
    """Sizes vLLM can shard this model over: attention heads split evenly, KV heads split or replicated."""
    shapes = _layer_shapes(config)
    sizes = []
    for size in range(1, n_gpus + 1):
        if shapes is not None:
            if shapes["heads"] % size:
                continue
            kv = shapes["kv_heads"]
            if kv % size and size % kv:
                continue
        sizes.append(size)
    return sizes


def fits(weight_bytes: int, kv_bytes: int, size: int, gpu_memory: int, utilization: float) -> bool:
    """Does one shard of the weights plus one longest prompt's KV cache fit on each GPU of a group?"""
    need = weight_bytes / size + kv_bytes / size + RESERVE_BYTES
    return need <= gpu_memory * utilization


def choose_tensor_parallel(
    config: dict,
    gpus: Sequence[GpuInfo],
    weight_bytes: int | None,
    kv_bytes: int,
    utilization: float,
    requested: int | None = None,
) -> int:
    """The requested size (validated), else the smallest valid size whose shard fits every chosen GPU."""
    valid = tensor_parallel_sizes(config, len(gpus))
    if requested is not None:
        if requested < 1:
            raise WsdmError(f"--tensor-parallel {requested}: must be at least 1")
        if requested > len(gpus):
            raise WsdmError(f"--tensor-parallel {requested}: only {len(gpus)} GPU(s) chosen")
        if requested not in valid:
            shapes = _layer_shapes(config) or {}
            raise WsdmError(
                f"--tensor-parallel {requested}: the model's {shapes.get('heads')} attention heads / "
                f"{shapes.get('kv_heads')} KV heads cannot be split that way; valid: {', '.join(map(str, valid))}"
            )
        return requested
    if weight_bytes is None:
        if len(gpus) == 1:
            return 1
        raise WsdmError(
            "cannot estimate the model's size from its config.json or weight files; pass --tensor-parallel N"
        )
    smallest_memory = min(gpu.total_memory for gpu in gpus)
    for size in valid:
        if fits(weight_bytes, kv_bytes, size, smallest_memory, utilization):
            return size
    largest = valid[-1] if valid else 1
    need = weight_bytes / largest + kv_bytes / largest + RESERVE_BYTES
    raise WsdmError(
        f"the model (~{weight_bytes / GIB:.1f} GiB of weights) does not fit: even tensor-parallel {largest} needs "
        f"~{need / GIB:.1f} GiB per GPU and {len(gpus)} GPU(s) of {smallest_memory / GIB:.1f} GiB at "
        f"--gpu-memory-utilization {utilization:g} give {smallest_memory * utilization / GIB:.1f} GiB; "
        "add GPUs, use a quantized checkpoint or lower --max-model-len"
    )


def split_groups(gpus: Sequence[GpuInfo], size: int) -> tuple[list[list[int]], list[int]]:
    """Consecutive groups of ``size`` GPU ordinals, and the ordinals left over."""
    ordinals = [gpu.index for gpu in gpus]
    count = len(ordinals) // size
    groups = [ordinals[i * size : (i + 1) * size] for i in range(count)]
    return groups, ordinals[count * size :]


def plan_gpus(
    config: dict,
    visible: Sequence[GpuInfo],
    *,
    longest_prompt: int,
    gpus: str | None = None,
    tensor_parallel: int | None = None,
    dtype: str = "auto",
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    fallback_weight_bytes: int | None = None,
    fp8: bool = False,
) -> GpuPlan:
    """Decide the whole layout from the options; every rejection is one line naming the option.

    ``fp8`` (``--precision fp8``): every chosen GPU needs FP8 tensor cores, and a full-precision
    checkpoint's linear layers count one byte per weight.
    """
    utilization = DEFAULT_GPU_MEMORY_UTILIZATION if gpu_memory_utilization is None else gpu_memory_utilization
    if not 0 < utilization <= 1:
        raise WsdmError(f"--gpu-memory-utilization {utilization}: must be in (0, 1]")
    chosen = parse_gpu_list(gpus, visible)
    if fp8:
        lacking = [gpu for gpu in chosen if not gpu.has_fp8]
        if lacking:
            raise WsdmError(
                f"--precision fp8: {lacking[0].describe()} has no FP8 tensor cores (needs compute capability "
                "8.9+: Ada, Hopper or newer); drop --precision fp8 to run the checkpoint as it is"
            )
    chosen_dtype = choose_dtype(dtype, chosen)
    length = choose_max_model_len(longest_prompt, max_model_len, config)
    weights = estimate_weight_bytes(config, chosen_dtype, fp8=fp8)
    if weights is None:
        weights = fallback_weight_bytes
    kv = kv_bytes_per_token(config, chosen_dtype) * length
    size = choose_tensor_parallel(config, chosen, weights, kv, utilization, tensor_parallel)
    groups, leftover = split_groups(chosen, size)
    notes = []
    if leftover:
        notes.append(
            f"GPU(s) {','.join(map(str, leftover))} left idle: {len(chosen)} GPUs do not divide into groups of {size}"
        )
    return GpuPlan(
        groups=groups,
        tensor_parallel=size,
        dtype=chosen_dtype,
        max_model_len=length,
        gpu_memory_utilization=utilization,
        weight_bytes=weights,
        notes=notes,
        fp8=fp8,
    )


# ---------------------------------------------------------------------------- splitting rows
def split_balanced(lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Row indices for ``parts`` engines with nearly equal token totals (longest rows placed first,
    each on the least loaded engine), each list ascending by index."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    loads = [0] * parts
    assigned: list[list[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        target = min(range(parts), key=lambda p: (loads[p], p))
        loads[target] += lengths[index]
        assigned[target].append(index)
    return [sorted(part) for part in assigned]
