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

from ..errors import WsdmError
from ..models.shape import estimate_weight_bytes, kv_bytes_per_token, layer_shapes, text_config
from .settings import DTYPES, EngineSettings

GIB = 1024**3
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
RESERVE_BYTES = int(2.5 * GIB)
"""Per-GPU memory kept for what is neither weights nor KV cache: the CUDA context, cuBLAS and NCCL
workspaces and the activations of one prefill step (vLLM profiles them at start; on a 14B model with
16k batched tokens they peak near 2 GiB)."""


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
    shapes = layer_shapes(config)
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
            shapes = layer_shapes(config) or {}
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
    settings: EngineSettings | None = None,
    fallback_weight_bytes: int | None = None,
) -> GpuPlan:
    """Decide the whole layout from the settings; every rejection is one line naming the option.

    ``settings.precision == "fp8"``: every chosen GPU needs FP8 tensor cores, and a full-precision
    checkpoint's linear layers count one byte per weight.
    """
    settings = settings or EngineSettings()
    utilization = settings.gpu_memory_utilization
    utilization = DEFAULT_GPU_MEMORY_UTILIZATION if utilization is None else utilization
    if not 0 < utilization <= 1:
        raise WsdmError(f"--gpu-memory-utilization {utilization}: must be in (0, 1]")
    chosen = parse_gpu_list(settings.gpus, visible)
    fp8 = settings.precision == "fp8"
    if fp8:
        lacking = [gpu for gpu in chosen if not gpu.has_fp8]
        if lacking:
            raise WsdmError(
                f"--precision fp8: {lacking[0].describe()} has no FP8 tensor cores (needs compute capability "
                "8.9+: Ada, Hopper or newer); drop --precision fp8 to run the checkpoint as it is"
            )
    chosen_dtype = choose_dtype(settings.dtype, chosen)
    length = choose_max_model_len(longest_prompt, settings.max_model_len, config)
    weights = estimate_weight_bytes(config, chosen_dtype, fp8=fp8)
    if weights is None:
        weights = fallback_weight_bytes
    kv = kv_bytes_per_token(config, chosen_dtype) * length
    size = choose_tensor_parallel(config, chosen, weights, kv, utilization, settings.tensor_parallel)
    groups, leftover = split_groups(chosen, size)
    if settings.engines is not None:
        if settings.engines > len(groups):
            raise WsdmError(
                f"--engines {settings.engines}: {len(chosen)} GPU(s) in groups of {size} (tensor-parallel) "
                f"hold {len(groups)} engine(s)"
            )
        leftover = [gpu for group in groups[settings.engines :] for gpu in group] + leftover
        groups = groups[: settings.engines]
    notes = []
    if leftover:
        notes.append(
            f"GPU(s) {','.join(map(str, leftover))} left idle: {len(chosen)} GPUs do not divide into groups of {size}"
            if settings.engines is None
            else f"GPU(s) {','.join(map(str, leftover))} left idle: --engines {settings.engines}"
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
