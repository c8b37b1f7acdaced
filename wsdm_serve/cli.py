"""`wsdm-serve`: predict, render and the other commands a user of the judge needs.

Heavy libraries are imported inside commands so `wsdm-serve --help` is instant.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import EXIT_USAGE, WsdmError
from .textnorm import NORMALIZATIONS
from .tta import TTA_MODES

DEFAULT_MODEL = Path("model_save/final_model")
DEFAULT_SUBMISSION = Path("sub/submission.csv")
STARTED_AT = time.time()


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.ERROR if quiet else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("transformers", "huggingface_hub", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def user_errors(command):
    """Print a :class:`WsdmError` as one line on stderr and exit with code 2, without traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except WsdmError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)

    return wrapper


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


def model_options(command):
    command = click.option(
        "--trust-remote-code",
        is_flag=True,
        default=False,
        help="Allow code shipped inside the model folder to run (off: the judge needs none).",
    )(command)
    command = click.option(
        "--text-normalization",
        type=click.Choice(NORMALIZATIONS),
        default="reference",
        show_default=True,
        help="reference: list literals joined with newlines, other responses lose square brackets "
        "(what the released model saw); none: text as it is.",
    )(command)
    return command


def vllm_options(command):
    """Options of the vllm engine; unset ones keep the engine's defaults (see docs/vllm.md)."""
    command = click.option(
        "--enforce-eager/--no-enforce-eager",
        default=None,
        help="vllm engine: run without CUDA graphs [default: eager; graphs gave no speed on scoring and start slower].",
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
        help="vllm engine: GPUs per engine [default: the fewest the model fits on]; "
        "the other GPUs run more engines (data parallel).",
    )(command)
    command = click.option(
        "--gpus",
        default=None,
        help="vllm engine: GPU numbers to use, e.g. 0,1 [default: all visible].",
    )(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsdm-serve")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bars or warnings; errors and the summary only."
)
@click.pass_context
def main(ctx: click.Context, quiet: bool) -> None:
    """Judge chatbot responses in pairs: which of two responses would the user prefer?"""
    _setup_logging(quiet)
    ctx.obj = {"quiet": quiet}


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=DEFAULT_MODEL,
    show_default=True,
    help="Model folder (weights, config, tokenizer).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_SUBMISSION,
    show_default=True,
    help="Submission CSV with columns id,winner.",
)
@click.option(
    "--probs",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write id, p_a, p_b to this parquet file.",
)
@click.option(
    "--tta",
    type=click.Choice(TTA_MODES),
    default="budget",
    show_default=True,
    help="Swap test-time augmentation: none, all rows, or the least confident rows that fit the budget.",
)
@click.option(
    "--time-budget",
    type=click.FloatRange(min=0),
    default=None,
    help="Minutes for the whole job with --tta budget [default: the reference's rule from the row count].",
)
@click.option(
    "--engine",
    type=click.Choice(["auto", "hf", "vllm"]),
    default="auto",
    show_default=True,
    help="auto: vllm when it imports and a CUDA GPU is visible, else hf (transformers).",
)
@click.option("--device", default="auto", show_default=True, help="hf engine: auto, cpu, cuda or cuda:N.")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
    default="auto",
    show_default=True,
    help="auto: bf16 on GPUs that have it (compute capability 8.0+), fp16 on older GPUs (T4), fp32 on CPU.",
)
@click.option(
    "--batch-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="hf engine: padded tokens per batch [default: 32768 on GPU, 8192 on CPU].",
)
@vllm_options
@truncation_options
@model_options
@click.pass_context
@user_errors
def predict(
    ctx,
    path,
    model,
    out,
    probs,
    tta,
    time_budget,
    engine,
    device,
    dtype,
    batch_tokens,
    gpus,
    tensor_parallel,
    max_model_len,
    gpu_memory_utilization,
    enforce_eager,
    token_budget,
    response_word_cap,
    text_normalization,
    trust_remote_code,
) -> None:
    """Predict the winner of every row of PATH (parquet, csv or jsonl) and write a submission."""
    import pandas as pd

    from .data import load_arena_rows
    from .engines.select import EngineOptions
    from .outputs import check_writable, write_frame
    from .predict import PredictConfig, run_predict
    from .truncation import TruncationConfig
    from .tta import winners

    quiet = ctx.obj["quiet"]
    if probs is not None and probs.suffix.lower() != ".parquet":
        raise WsdmError(f"{probs}: --probs writes parquet; give a .parquet path")
    if out.suffix.lower() != ".csv":
        raise WsdmError(f"{out}: --out writes CSV; give a .csv path")
    check_writable(out, probs)
    rows = load_arena_rows(path, text_normalization)
    config = PredictConfig(
        model=model,
        tta=tta,
        time_budget_minutes=time_budget,
        truncation=TruncationConfig(token_budget=token_budget, response_word_cap=response_word_cap),
        engine=EngineOptions(
            name=engine,
            device=device,
            dtype=dtype,
            batch_tokens=batch_tokens,
            gpus=gpus,
            tensor_parallel=tensor_parallel,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
        ),
        trust_remote_code=trust_remote_code,
        progress=not quiet,
    )
    result = run_predict(rows, config, STARTED_AT)
    submission = pd.DataFrame({"id": result.ids, "winner": winners(result.probs)})
    if probs is not None:
        write_frame(
            pd.DataFrame({"id": result.ids, "p_a": result.probs[:, 0], "p_b": result.probs[:, 1]}), probs
        )
    write_frame(submission, out)
    click.echo(f"predict: {result.summary()} -> {out}", err=True)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=DEFAULT_MODEL,
    show_default=True,
    help="Model folder; only its tokenizer and chat template are used.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Output table, .parquet or .csv: id, text, text_swapped, n_tokens.",
)
@truncation_options
@model_options
@click.pass_context
@user_errors
def render(
    ctx, path, model, out, token_budget, response_word_cap, text_normalization, trust_remote_code
) -> None:
    """Write the exact prompts the model will see for every row of PATH."""
    import pandas as pd

    from .data import load_arena_rows
    from .outputs import check_writable, write_frame
    from .preprocess import build_prompts
    from .tokenizer import load_tokenizer
    from .truncation import TruncationConfig

    if out.suffix.lower() not in (".parquet", ".csv"):
        raise WsdmError(f"{out}: unsupported output type {out.suffix or '(none)'}; use .parquet or .csv")
    check_writable(out)
    rows = load_arena_rows(path, text_normalization)
    tokenizer = load_tokenizer(model, trust_remote_code)
    config = TruncationConfig(token_budget=token_budget, response_word_cap=response_word_cap)
    prompts = build_prompts(rows, tokenizer, config, with_swapped_ids=False, progress=not ctx.obj["quiet"])
    frame = pd.DataFrame(
        {
            "id": rows.ids,
            "text": prompts.texts,
            "text_swapped": prompts.swapped_texts,
            "n_tokens": prompts.n_tokens,
        }
    )
    write_frame(frame, out)
    click.echo(f"render: {len(frame)} rows, {int(prompts.n_tokens.sum()):,} tokens -> {out}", err=True)


if __name__ == "__main__":
    main()
