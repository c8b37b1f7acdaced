"""Starting the vllm engine on CPUs from a :class:`~.cpu_plan.CpuPlan`: the same ``VLLMScorer`` as on
GPUs, given the plan's engine arguments, with each engine's core binding in the environment of the
process that starts it.

vLLM's CPU build reads ``VLLM_CPU_OMP_THREADS_BIND`` when it starts an engine's worker processes,
so the variable must be set in the process that creates the engine, before it does: for one engine
that is this process (set while the engine starts, then restored); for several, each engine pool
worker sets its own (:func:`cpu_scorer` is the pool's factory), as ``CUDA_VISIBLE_DEVICES`` does for
GPU groups.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from .cpu_plan import CpuPlan
from .pool import EnginePool, WorkerSpec
from .vllm import VLLMScorer
from .vllm_setup import VLLMLaunch


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set variables for the duration of the block (child processes started inside inherit them)."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cpu_scorer(environment_values: Mapping[str, str], launch: VLLMLaunch) -> VLLMScorer:
    """One engine of a CPU plan: a ``VLLMScorer`` started with the engine's binding in the environment."""
    with environment(environment_values):
        return VLLMScorer(launch)


def cpu_scorer_arguments(
    plan: CpuPlan,
    model_dir: str | Path,
    letter_ids: tuple[int, int],
    *,
    trust_remote_code: bool = False,
    max_num_batched_tokens: int | None = None,
    extra_args: dict | None = None,
) -> dict:
    """``VLLMScorer`` keyword arguments for every engine of the plan.

    ``gpu_memory_utilization`` is vLLM's default: on the CPU build it is the share of the machine's
    RAM to take for the KV cache, and it is ignored once ``kv_cache_memory_bytes`` is given.
    """
    arguments = plan.engine_arguments()
    launch = VLLMLaunch(
        model_dir=str(model_dir),
        letter_ids=tuple(letter_ids),
        tensor_parallel=arguments.pop("tensor_parallel_size"),
        dtype=arguments.pop("dtype"),
        max_model_len=arguments.pop("max_model_len"),
        gpu_memory_utilization=0.9,
        enforce_eager=True,
        trust_remote_code=trust_remote_code,
        max_num_batched_tokens=max_num_batched_tokens,
        extra_args={**arguments, **(extra_args or {})},
    )
    return {"launch": launch}


def start_cpu_engines(plan: CpuPlan, scorer_kwargs: dict) -> VLLMScorer | EnginePool:
    """The plan's one engine in this process, or a pool with one worker process per engine."""
    if plan.data_parallel == 1:
        return cpu_scorer(plan.environment(0), **scorer_kwargs)
    specs = [
        WorkerSpec(
            factory="wsdm_serve.engines.vllm_cpu:cpu_scorer",
            kwargs={"environment_values": plan.environment(engine), **scorer_kwargs},
            label=f"vllm engine on cores {plan.binding(engine)}",
        )
        for engine in range(plan.data_parallel)
    ]
    return EnginePool(specs, name="vllm")
