"""`wsdm-train merge` and `wsdm-train quantize`: thin commands over merge.py and quantize.py.

The work lives in :func:`wsdm_train.merge.merge_folds` and :func:`wsdm_train.quantize.quantize_model`
so a pipeline can call them directly; these commands only map options to their settings.
"""

from __future__ import annotations

from pathlib import Path

import click

from wsdm_serve.cli import user_errors

DEFAULT_BASE = Path("model_save/pretrained/Qwen2.5-14B-Instruct")
DEFAULT_MERGED = Path("model_save/merged")
DEFAULT_QUANTIZED = Path("model_save/final_model")
DEFAULT_CALIBRATION = Path("data/processed/student/fold0/train.parquet")


@click.command()
@click.option(
    "--base",
    type=click.Path(path_type=Path),
    default=DEFAULT_BASE,
    show_default=True,
    help="Base model folder the fold adapters were trained on.",
)
@click.option(
    "--adapter",
    "adapters",
    type=click.Path(path_type=Path),
    multiple=True,
    help="A fold's PEFT adapter folder; repeat once per fold [default: MODEL_DIR/student/fold{k}/best].",
)
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path),
    default=Path("model_save"),
    show_default=True,
    help="Where the training stages write; gives the default adapters.",
)
@click.option(
    "--folds", type=click.IntRange(min=1), default=5, show_default=True, help="Folds merged by default."
)
@click.option(
    "--mode",
    type=click.Choice(["reference", "delta"]),
    default="reference",
    show_default=True,
    help="reference: average every LoRA tensor, A and B separately, as the published recipe did; "
    "delta: the exact mean of the folds' weight deltas (one adapter of rank folds x r).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_MERGED,
    show_default=True,
    help="Merged model folder (sharded safetensors, config, tokenizer).",
)
@click.option(
    "--adapter-out",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the combined adapter is saved [default: OUT_adapter beside OUT].",
)
@click.option(
    "--tokenizer",
    type=click.Path(path_type=Path),
    default=None,
    help="Tokenizer saved with the model [default: the base model's].",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
    default="auto",
    show_default=True,
    help="dtype of the merged weights; auto keeps the base checkpoint's.",
)
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard.")
@click.option("--force", is_flag=True, help="Replace OUT even if it holds another merge.")
@click.option(
    "--trust-remote-code", is_flag=True, default=False, help="Allow code shipped in the base folder to run."
)
@user_errors
def merge(
    base: Path,
    adapters: tuple[Path, ...],
    model_dir: Path,
    folds: int,
    mode: str,
    out: Path,
    adapter_out: Path | None,
    tokenizer: Path | None,
    dtype: str,
    max_shard_size: str,
    force: bool,
    trust_remote_code: bool,
) -> None:
    """Combine the fold adapters and merge them into the base model.

    A re-run with the same adapters, base and settings does nothing.
    """
    from .merge import MergeConfig, default_adapter_dirs, merge_folds

    result = merge_folds(
        base,
        list(adapters) or default_adapter_dirs(model_dir, folds),
        out,
        config=MergeConfig(mode=mode, dtype=dtype, max_shard_size=max_shard_size),
        adapter_out=adapter_out,
        tokenizer=tokenizer,
        force=force,
        trust_remote_code=trust_remote_code,
    )
    click.echo(f"merge: {result.summary()}", err=True)


@click.command()
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=DEFAULT_MERGED,
    show_default=True,
    help="Merged full-precision model folder (from `wsdm-train merge`).",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    default=DEFAULT_CALIBRATION,
    show_default=True,
    help="Table with a 'text' column to calibrate on (fold 0's student training prompts).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_QUANTIZED,
    show_default=True,
    help="Quantized model folder.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["compressed-tensors", "gptq"]),
    default="compressed-tensors",
    show_default=True,
    help="compressed-tensors: vLLM's native format, also read by the transformers engine; "
    "gptq: GPTQ v1 like the released model (vLLM only; runs on GPUs without Marlin such as the T4).",
)
@click.option(
    "--calibration-samples",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Prompts drawn.",
)
@click.option("--seed", type=int, default=2025, show_default=True, help="random_state of the draw.")
@click.option(
    "--max-calibration-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Keep only the first N tokens of each prompt [default: whole prompts, as the reference].",
)
@click.option("--bits", type=click.Choice(["4", "8"]), default="8", show_default=True, help="Weight bits.")
@click.option(
    "--group-size", type=int, default=128, show_default=True, help="Inputs sharing a scale (-1: per channel)."
)
@click.option(
    "--act-order", is_flag=True, help="Quantize columns in activation order (the reference did not)."
)
@click.option(
    "--dampening",
    type=float,
    default=0.1,
    show_default=True,
    help="GPTQ damping fraction of the Hessian diagonal.",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
    default="auto",
    show_default=True,
    help="dtype the model is calibrated in; auto keeps the checkpoint's.",
)
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard.")
@click.option("--force", is_flag=True, help="Replace OUT even if it holds another quantization.")
@click.option(
    "--trust-remote-code", is_flag=True, default=False, help="Allow code shipped in the model folder to run."
)
@user_errors
def quantize(
    model: Path,
    calibration: Path,
    out: Path,
    fmt: str,
    calibration_samples: int,
    seed: int,
    max_calibration_tokens: int | None,
    bits: str,
    group_size: int,
    act_order: bool,
    dampening: float,
    dtype: str,
    max_shard_size: str,
    force: bool,
    trust_remote_code: bool,
) -> None:
    """GPTQ-quantize the merged model (8-bit, group 128, symmetric, as the reference) and verify it.

    Needs llm-compressor (pip install 'wsdm[quantize]'), in an environment without vLLM.
    Runs on a GPU when one is visible, layer by layer; on CPU for small models.
    """
    from .quantize import QuantizeConfig, quantize_model

    config = QuantizeConfig(
        bits=int(bits),
        group_size=group_size,
        act_order=act_order,
        dampening=dampening,
        calibration_samples=calibration_samples,
        calibration_seed=seed,
        max_calibration_tokens=max_calibration_tokens,
        format=fmt,
        dtype=dtype,
        max_shard_size=max_shard_size,
    )
    result = quantize_model(
        model, out, calibration=calibration, config=config, force=force, trust_remote_code=trust_remote_code
    )
    click.echo(f"quantize: {result.summary()}", err=True)


def add_model_commands(group: click.Group) -> None:
    group.add_command(merge)
    group.add_command(quantize)
