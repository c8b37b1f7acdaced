"""Options and error handling shared by every `wsdm-serve` command (and `wsdm-train`'s).

A command module imports its option decorators from here, so adding a command never means
editing another command's module.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from ..quiet import hide_library_progress_bars
from ..textnorm import NORMALIZATIONS

DEFAULT_MODEL = Path("model_save/final_model")
DEFAULT_SUBMISSION = Path("sub/submission.csv")


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.ERROR if quiet else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("transformers", "huggingface_hub", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if quiet:
        hide_library_progress_bars()


def truncation_options(command):
    """Budgets of the prompt; the defaults are the inference settings the released model expects."""
    command = click.option(
        "--response-word-cap",
        type=click.IntRange(min=0),
        default=4200,
        show_default=True,
        help="Keep at most this many space-separated words of each response before counting tokens.",
    )(command)
    command = click.option(
        "--token-budget",
        type=click.IntRange(min=1),
        default=10000,
        show_default=True,
        help="Tokens allowed for query + both responses (the template around them is extra).",
    )(command)
    return command


def normalization_option(command):
    return click.option(
        "--text-normalization",
        type=click.Choice(NORMALIZATIONS),
        default="reference",
        show_default=True,
        help="reference: list literals joined with newlines, other responses lose square brackets "
        "(what the released model saw); none: text as it is.",
    )(command)


def trust_remote_code_option(command):
    return click.option(
        "--trust-remote-code",
        is_flag=True,
        default=False,
        help="Allow code shipped inside the model folder to run (off: the judge needs none).",
    )(command)


def vllm_options(command):
    """Options of the vllm engine; unset ones keep the engine's defaults (see docs/vllm.md)."""
    command = click.option(
        "--kv-cache-gib",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="vllm engine on CPUs: KV cache of each tensor-parallel rank, GiB [default: 2 per engine, "
        "less where memory is short].",
    )(command)
    command = click.option(
        "--engines",
        type=click.IntRange(min=1),
        default=None,
        help="vllm engine: engines run side by side (data parallel) [default: as many as the GPUs hold; "
        "on CPUs one per NUMA node, as memory allows].",
    )(command)
    command = click.option(
        "--cpus",
        default=None,
        help="vllm engine on CPUs: cores to use, e.g. 0-3,8 [default: all this process may use].",
    )(command)
    command = click.option(
        "--enforce-eager/--no-enforce-eager",
        default=None,
        help="vllm engine: run without torch.compile and CUDA graphs [default: eager; graphs add 1-2% in FP8, ~0.5% in bf16, and 70-100 s of start-up].",
    )(command)
    command = click.option(
        "--max-num-batched-tokens",
        type=click.IntRange(min=1024),
        default=None,
        help="vllm engine: prompt tokens per scheduler step [default: vLLM's, 16384 on an H100/H200]; "
        "32768 gave FP8 3% more on one H200, bf16 nothing (docs/benchmarks.md).",
    )(command)
    command = click.option(
        "--gpu-memory-utilization",
        type=click.FloatRange(min=0, max=1, min_open=True),
        default=None,
        help="vllm engine: fraction of each GPU's memory vLLM may take [default: 0.9].",
    )(command)
    command = click.option(
        "--max-model-len",
        type=click.IntRange(min=2),
        default=None,
        help="vllm engine: context length [default: longest prompt, forward or swapped, + 1].",
    )(command)
    command = click.option(
        "--tensor-parallel",
        type=click.IntRange(min=1),
        default=None,
        help="vllm engine: GPUs (on CPUs: ranks) per engine [default: the fewest GPUs the model fits on, "
        "the other GPUs run more engines; on CPUs one single-threaded rank per core on NUMA nodes of up "
        "to 2 cores, else one].",
    )(command)
    command = click.option(
        "--gpus",
        default=None,
        help="vllm engine: GPU numbers to use, e.g. 0,1 [default: all visible].",
    )(command)
    return command


def engine_options(command):
    """Which engine scores prompts and its settings: the options of :class:`EngineSettings`."""
    command = vllm_options(command)
    command = click.option(
        "--batch-tokens",
        type=click.IntRange(min=1),
        default=None,
        help="hf engine: padded tokens per batch [default: 32768 on GPU, 8192 on CPU].",
    )(command)
    command = click.option(
        "--dtype",
        type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
        default="auto",
        show_default=True,
        help="auto: bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (bf16 for 4-bit "
        "checkpoints on vLLM's CPU build).",
    )(command)
    command = click.option(
        "--device",
        default="auto",
        show_default=True,
        help="auto, cpu, cuda, or cuda:N (hf engine); cpu with the vllm engine runs vLLM's CPU build.",
    )(command)
    command = click.option(
        "--precision",
        type=click.Choice(["checkpoint", "fp8"]),
        default="checkpoint",
        show_default=True,
        help="checkpoint: exactly what the model folder holds; fp8: FP8 tensor cores (vllm engine, "
        "compute capability 8.9+; see docs/precision.md).",
    )(command)
    command = click.option(
        "--engine",
        type=click.Choice(["auto", "hf", "vllm"]),
        default="auto",
        show_default=True,
        help="auto: vllm where it runs (its CUDA build and a GPU, or its CPU build and a model the CPU "
        "plan accepts), else hf (transformers).",
    )(command)
    return command


ENGINE_FIELDS = {
    "engine": "name",
    "device": "device",
    "dtype": "dtype",
    "batch_tokens": "batch_tokens",
    "gpus": "gpus",
    "cpus": "cpus",
    "engines": "engines",
    "tensor_parallel": "tensor_parallel",
    "max_model_len": "max_model_len",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "enforce_eager": "enforce_eager",
    "max_num_batched_tokens": "max_num_batched_tokens",
    "kv_cache_gib": "kv_cache_gib",
    "precision": "precision",
}
"""Command-line parameter -> field of EngineSettings."""

MODEL_HELP = "Model folder (weights, config, tokenizer)."


def judge_options(
    *,
    model: str | None = MODEL_HELP,
    engine: bool = True,
    truncation: bool = True,
    normalization: bool = True,
    model_parameter: str = "model",
):
    """The options that make a :class:`~wsdm_serve.settings.JudgeSettings`, handed to the command
    as one ``settings`` argument: ``--model`` (its help ``model``; ``None`` when the command names
    the folder itself, as the parameter ``model_parameter``), the engine options, truncation, text
    normalisation and ``--trust-remote-code``. A command with ``--tta``/``--time-budget`` has them
    folded in too. Every command that scores understands the same options the same way."""

    def decorate(command):
        target = command

        @functools.wraps(target)
        def collect(*args, **kwargs):
            from ..engines.settings import EngineSettings
            from ..settings import JudgeSettings
            from ..truncation import INFERENCE_TRUNCATION, TruncationConfig

            context = click.get_current_context(silent=True)
            quiet = bool(context and context.obj and context.obj.get("quiet"))
            folder = kwargs.pop("model") if model is not None else kwargs[model_parameter]
            fields = {field: kwargs.pop(name) for name, field in ENGINE_FIELDS.items() if name in kwargs}
            budgets = INFERENCE_TRUNCATION
            if truncation:
                budgets = TruncationConfig(
                    token_budget=kwargs.pop("token_budget"), response_word_cap=kwargs.pop("response_word_cap")
                )
            extra = {name: kwargs.pop(name) for name in ("tta",) if name in kwargs}
            if "time_budget" in kwargs:
                extra["time_budget_minutes"] = kwargs.pop("time_budget")
            settings = JudgeSettings(
                model=folder,
                engine=EngineSettings(**fields, trust_remote_code=kwargs.pop("trust_remote_code")),
                truncation=budgets,
                text_normalization=kwargs.pop("text_normalization") if normalization else "reference",
                progress=not quiet,
                **extra,
            )
            return target(*args, settings=settings, **kwargs)

        command = collect
        command = trust_remote_code_option(command)
        if normalization:
            command = normalization_option(command)
        if truncation:
            command = truncation_options(command)
        if engine:
            command = engine_options(command)
        if model is not None:
            command = click.option(
                "--model",
                type=click.Path(path_type=Path),
                default=DEFAULT_MODEL,
                show_default=True,
                help=model,
            )(command)
        return command

    return decorate
