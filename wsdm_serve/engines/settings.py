"""The settings of an engine: one frozen object, handed whole from the command line to the engines.

Every option keeps ``None`` for "the engine's default", so what a user set can be told from what
they left alone: that is how an option meant for the other engine is found and refused.
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("auto", "hf", "vllm")
RUNNABLE_ENGINES = ("hf", "vllm")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class EngineSettings:
    """Which engine scores prompts and how; ``name`` is ``auto`` until :func:`resolve_engine` decides."""

    name: str = "auto"
    device: str = "auto"
    """hf: auto, cpu, cuda or cuda:N. vllm: auto, cpu (vLLM's CPU build) or cuda; resolved to cpu or
    cuda by :func:`~.select.resolve_engine`."""
    dtype: str = "auto"
    batch_tokens: int | None = None
    """hf engine: padded tokens per batch (None: 32,768 on a GPU, 8,192 on a CPU)."""
    gpus: str | None = None
    cpus: str | None = None
    """vllm engine on CPUs: the cores to use, e.g. ``0-3,8`` (None: every core this process may use)."""
    engines: int | None = None
    """vllm engine: data-parallel engines (None: as many as the GPUs, or the cores and memory, hold)."""
    tensor_parallel: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    enforce_eager: bool | None = None
    max_num_batched_tokens: int | None = None
    """Tokens per vLLM scheduler step (None: vLLM's choice, 16,384 on one H100/H200 for this load)."""
    kv_cache_gib: float | None = None
    """vllm engine on CPUs: KV cache of each tensor-parallel rank, GiB (None: the CPU plan's, 2 GiB an engine)."""
    load_format: str = "auto"
    """``dummy`` builds random weights from config.json (benchmarks); not a command-line option."""
    precision: str = "checkpoint"
    """``checkpoint``: what the folder holds; ``fp8``: FP8 tensor cores (vllm engine, see models.precision)."""
    trust_remote_code: bool = False
    """Let code shipped in the model folder run while the model and its tokenizer load."""

    @property
    def resolved(self) -> bool:
        return self.name in RUNNABLE_ENGINES

    @property
    def on_cpu(self) -> bool:
        """The engine runs on CPUs: ``device`` says so (the vllm engine's is always decided)."""
        return self.device == "cpu"

    def vllm_only(self) -> list[str]:
        """The vllm engine's options that were set, as their command-line flags."""
        given = {
            "--gpus": self.gpus,
            "--cpus": self.cpus,
            "--engines": self.engines,
            "--tensor-parallel": self.tensor_parallel,
            "--max-model-len": self.max_model_len,
            "--gpu-memory-utilization": self.gpu_memory_utilization,
            "--enforce-eager/--no-enforce-eager": self.enforce_eager,
            "--max-num-batched-tokens": self.max_num_batched_tokens,
            "--kv-cache-gib": self.kv_cache_gib,
        }
        return [flag for flag, value in given.items() if value is not None]

    def gpu_only(self) -> list[str]:
        """The vllm engine's options that only its GPU plan takes."""
        given = {"--gpus": self.gpus, "--gpu-memory-utilization": self.gpu_memory_utilization}
        return [flag for flag, value in given.items() if value is not None]

    def cpu_only(self) -> list[str]:
        """The vllm engine's options that only its CPU plan takes."""
        given = {"--cpus": self.cpus, "--kv-cache-gib": self.kv_cache_gib}
        return [flag for flag, value in given.items() if value is not None]

    def hf_only(self) -> list[str]:
        """The hf engine's options that were set, as their command-line flags."""
        given = []
        if self.batch_tokens is not None:
            given.append("--batch-tokens")
        if self.device.startswith("cuda:"):
            given.append(f"--device {self.device}")
        return given
