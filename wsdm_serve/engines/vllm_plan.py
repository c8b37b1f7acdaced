"""The vllm engine's layout on GPUs or on CPUs, as one plan every vLLM engine starts from.

:func:`plan_engine` turns resolved :class:`EngineSettings` (``device`` ``cuda`` or ``cpu``, decided
by :func:`~.select.resolve_engine`) into a :class:`VLLMPlan`: the GPU plan (:mod:`.gpu_plan`) or the
CPU plan (:mod:`.cpu_plan`), and for each engine of it the environment its process must have before
vLLM starts. That environment is the only difference between the two in how an engine is started:

- on GPUs, ``CUDA_VISIBLE_DEVICES`` naming the engine's group. CUDA reads it once per process, so an
  engine whose group is not "every visible GPU" runs in a process of its own;
- on CPUs, ``VLLM_CPU_OMP_THREADS_BIND`` naming each rank's cores. vLLM's CPU build reads it when the
  engine starts its worker processes, so one engine can take it in this process.

Everything else (``VLLMScorer``, the server's ``VLLMAsyncEngine``, the engine pool, the engine
arguments of :class:`~.vllm_setup.VLLMLaunch`) is the same code for both.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import WsdmError
from ..models.folder import ModelFolder
from ..models.shape import checkpoint_bytes
from .cpu_machine import GIB, CpuMachine
from .cpu_plan import CpuPlan, plan_cpus
from .gpu_plan import GpuPlan, detect_gpus, physical_device_ids, plan_gpus
from .settings import EngineSettings
from .vllm_setup import INSTALL_CPU, INSTALL_GPU, VLLM_MISSING, VLLMLaunch, vllm_build

if TYPE_CHECKING:
    from ..models.fp8 import Fp8Recipe

log = logging.getLogger(__name__)

DEFAULT_GPU_MEMORY_UTILIZATION_ON_CPUS = 0.9
"""vLLM's own default; on the CPU build it would size the KV cache from RAM, but the plan always
gives ``kv_cache_memory_bytes``, which wins over it."""


@dataclass(frozen=True)
class VLLMPlan:
    """The decided layout and, for each of its engines, what the process that starts it must have."""

    layout: GpuPlan | CpuPlan
    environments: tuple[dict[str, str], ...]
    """Per engine: variables set before vLLM starts (``CUDA_VISIBLE_DEVICES`` or the core binding)."""
    labels: tuple[str, ...]
    """Per engine: where it runs, for messages ("GPUs 0,1", "cores 0|1")."""
    in_process: bool
    """One engine that the calling process can start itself (else one worker process per engine)."""
    precision_args: dict

    @property
    def device(self) -> str:
        return "cpu" if isinstance(self.layout, CpuPlan) else "cuda"

    @property
    def data_parallel(self) -> int:
        return self.layout.data_parallel

    @property
    def tensor_parallel(self) -> int:
        return self.layout.tensor_parallel

    @property
    def dtype(self) -> str:
        return self.layout.dtype

    @property
    def max_model_len(self) -> int:
        return self.layout.max_model_len

    def describe(self) -> str:
        return self.layout.describe()

    def info(self, engine: int = 0) -> dict:
        """What the server reports about the engine it runs (``/v1/model``)."""
        layout = self.layout
        where = (
            {"cpus": layout.binding(engine), "kv_cache_gib": round(layout.kv_cache_bytes / GIB, 3)}
            if isinstance(layout, CpuPlan)
            else {"gpus": layout.groups[engine], "gpu_memory_utilization": layout.gpu_memory_utilization}
        )
        return {
            "device": self.device,
            "precision": layout.dtype,
            "tensor_parallel": layout.tensor_parallel,
            "max_model_len": layout.max_model_len,
            **where,
        }


def vllm_device(settings: EngineSettings) -> str:
    """Where the vllm engine runs, ``cuda`` or ``cpu``: what ``--device`` asks, which must be what the
    installed build runs on; ``auto`` is the installed build's (the CPU build cannot use a GPU, and
    the CUDA build does not run on CPUs). Decided without importing vLLM or torch."""
    build = vllm_build()
    if build is None:
        raise WsdmError(VLLM_MISSING)
    device = settings.device
    if device == "auto":
        return build
    if device == "cpu" and build != "cpu":
        raise WsdmError(
            "--device cpu: the installed vLLM is its CUDA build; the vllm engine on CPUs needs vLLM's CPU "
            f"build, in an environment of its own ({INSTALL_CPU}), or use --engine hf"
        )
    if device == "cuda" and build != "cuda":
        raise WsdmError(
            f"--device cuda: the installed vLLM is its CPU build; on a CUDA GPU machine {INSTALL_GPU}, "
            "or drop --device cuda to run on the CPUs"
        )
    if device not in ("cpu", "cuda"):
        raise WsdmError(
            f"--device {device}: the vllm engine takes auto, cpu or cuda (choose GPUs with --gpus)"
        )
    return device


def plan_engine(
    model: ModelFolder,
    longest_prompt: int,
    settings: EngineSettings,
    fp8_recipe: Fp8Recipe | None = None,
) -> VLLMPlan:
    """The layout for the model (its notes logged) on the device of ``settings`` (``auto``: the
    installed build's), with the vLLM arguments that ``settings.precision`` asks for (online FP8 of
    a bf16 checkpoint, or none)."""
    device = vllm_device(settings)
    from ..models.fp8 import DEFAULT_RECIPE, MEASURED_AGREEMENT
    from ..models.precision import checkpoint_kind, vllm_arguments

    config = model.config
    recipe = fp8_recipe or DEFAULT_RECIPE
    precision_args = vllm_arguments(config, settings.precision, recipe)
    if settings.precision == "fp8":
        log.info("precision fp8: %s", recipe.describe())
    if settings.precision == "fp8" or checkpoint_kind(config) == "fp8":
        log.warning("FP8: %s", MEASURED_AGREEMENT)
    plan = (
        _on_cpus(model, longest_prompt, settings, precision_args)
        if device == "cpu"
        else _on_gpus(model, longest_prompt, settings, precision_args)
    )
    for note in plan.layout.notes:
        log.warning(note)
    log.info("vllm engine: %s", plan.describe())
    return plan


def _on_gpus(
    model: ModelFolder, longest_prompt: int, settings: EngineSettings, precision_args: dict
) -> VLLMPlan:
    visible = detect_gpus()
    if not visible:
        raise WsdmError("no CUDA GPU is visible; the vllm engine needs one (use --device cpu or --engine hf)")
    layout = plan_gpus(
        model.config,
        visible,
        longest_prompt=longest_prompt,
        settings=settings,
        fallback_weight_bytes=_weight_file_bytes(model, settings),
    )
    everything = [gpu.index for gpu in visible]
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    # A group of every visible GPU needs nothing set; any other is shown only its own GPUs.
    environments = tuple(
        {} if sorted(group) == everything else {"CUDA_VISIBLE_DEVICES": physical_device_ids(group, inherited)}
        for group in layout.groups
    )
    labels = tuple(
        f"GPU{'s' if len(group) > 1 else ''} {','.join(map(str, group))}" for group in layout.groups
    )
    in_process = len(layout.groups) == 1 and not environments[0]
    return VLLMPlan(layout, environments, labels, in_process, precision_args)


def _on_cpus(
    model: ModelFolder, longest_prompt: int, settings: EngineSettings, precision_args: dict
) -> VLLMPlan:
    layout = cpu_layout(model, settings, longest_prompt)
    engines = range(layout.data_parallel)
    return VLLMPlan(
        layout,
        environments=tuple(layout.environment(e) for e in engines),
        labels=tuple(f"cores {layout.binding(e)}" for e in engines),
        in_process=layout.data_parallel == 1,
        precision_args=precision_args,
    )


def cpu_layout(
    model: ModelFolder, settings: EngineSettings, longest_prompt: int, machine: CpuMachine | None = None
) -> CpuPlan:
    """The CPU plan of ``settings`` for the model on this machine (or ``machine``); every refusal of
    the CPU build (head size, 8-bit or FP8 weights, memory, cores) is one line naming the option."""
    from ..models.precision import checkpoint_kind
    from .cpu_machine import detect_machine

    config = model.config
    return plan_cpus(
        config,
        machine or detect_machine(),
        longest_prompt=longest_prompt,
        kind=checkpoint_kind(config),
        cpus=settings.cpus,
        tensor_parallel=settings.tensor_parallel,
        engines=settings.engines,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        kv_cache_gib=settings.kv_cache_gib,
        fallback_weight_bytes=_weight_file_bytes(model, settings),
        precision=settings.precision,
    )


def _weight_file_bytes(model: ModelFolder, settings: EngineSettings) -> int | None:
    return None if settings.load_format == "dummy" else checkpoint_bytes(model.path)


def launch_of(
    plan: VLLMPlan | GpuPlan | CpuPlan,
    model: ModelFolder,
    letter_ids: tuple[int, int],
    settings: EngineSettings,
    extra_args: dict | None = None,
) -> VLLMLaunch:
    """How each engine of the plan starts (every engine has the same shape)."""
    layout = plan.layout if isinstance(plan, VLLMPlan) else plan
    on_cpus = isinstance(layout, CpuPlan)
    return VLLMLaunch(
        model_dir=str(model.path),
        letter_ids=tuple(letter_ids),
        tensor_parallel=layout.tensor_parallel,
        dtype=layout.dtype,
        max_model_len=layout.max_model_len,
        gpu_memory_utilization=(
            DEFAULT_GPU_MEMORY_UTILIZATION_ON_CPUS if on_cpus else layout.gpu_memory_utilization
        ),
        enforce_eager=True if settings.enforce_eager is None else settings.enforce_eager,
        trust_remote_code=settings.trust_remote_code,
        load_format=settings.load_format,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        kv_cache_memory_bytes=layout.kv_cache_bytes if on_cpus else None,
        device="cpu" if on_cpus else "cuda",
        extra_args=dict(extra_args or {}),
    )
