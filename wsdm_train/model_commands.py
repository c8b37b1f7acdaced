"""`wsdm-train merge` and `wsdm-train quantize`: thin commands over merge.py and quantize.py.

Both read the configuration (``--config``/``--set``) like every other command; their explicit
options override the matching configuration fields for one run. The work lives in
:func:`wsdm_train.merge.merge_from_config` and :func:`wsdm_train.quantize.quantize_from_config`,
which `wsdm-train all` calls too.
"""

from __future__ import annotations

from pathlib import Path

import click

from wsdm_serve.errors import user_errors
from wsdm_serve.quiet import library_bars_hidden

from .options import config_options, load, quiet_requested

DTYPES = ["auto", "bfloat16", "float16", "float32"]


@click.command()
@config_options
@click.option(
    "--base",
    type=click.Path(path_type=Path),
    default=None,
    help="Base model folder the fold adapters were trained on [default: student.model].",
)
@click.option(
    "--adapter",
    "adapters",
    type=click.Path(path_type=Path),
    multiple=True,
    help="A fold's PEFT adapter folder; repeat once per fold "
    "[default: MODEL_DIR/student/fold{k}/<merge.adapter>, k < --folds].",
)
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the training stages wrote; gives the default adapters and OUT [default: paths.model_dir].",
)
@click.option(
    "--folds",
    type=click.IntRange(min=1),
    default=None,
    help="Folds merged by default [default: prepare.n_folds].",
)
@click.option(
    "--mode",
    type=click.Choice(["reference", "delta"]),
    default=None,
    help="reference: average every LoRA tensor, A and B separately, as the published recipe did; "
    "delta: the exact mean of the folds' weight deltas (one adapter of rank folds x r) "
    "[default: merge.mode].",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Merged model folder: sharded safetensors, config, tokenizer [default: merge.out, or MODEL_DIR/merged].",
)
@click.option(
    "--adapter-out",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the combined adapter is saved [default: merge.adapter_out, or OUT_adapter beside OUT].",
)
@click.option(
    "--tokenizer",
    type=click.Path(path_type=Path),
    default=None,
    help="Tokenizer saved with the model [default: student.tokenizer, or the base model's].",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default=None,
    help="dtype of the merged weights; auto keeps the base checkpoint's [default: merge.dtype].",
)
@click.option(
    "--max-shard-size", default=None, help="Largest safetensors shard [default: merge.max_shard_size]."
)
@click.option("--force", is_flag=True, help="Replace OUT even if it holds another merge.")
@click.option(
    "--trust-remote-code",
    is_flag=True,
    default=False,
    help="Allow code shipped in the base folder to run [default: student.trust_remote_code].",
)
@user_errors
def merge(
    config_name: str,
    overrides: tuple[str, ...],
    base: Path | None,
    adapters: tuple[Path, ...],
    model_dir: Path | None,
    folds: int | None,
    mode: str | None,
    out: Path | None,
    adapter_out: Path | None,
    tokenizer: Path | None,
    dtype: str | None,
    max_shard_size: str | None,
    force: bool,
    trust_remote_code: bool,
) -> None:
    """Combine the fold adapters and merge them into the base model.

    A re-run with the same adapters, base and settings does nothing.
    """
    quiet_requested(False)  # -q: the libraries' own bars hidden too (before they are imported)
    from .config import with_values
    from .merge import merge_from_config

    config = with_values(
        load(config_name, overrides),
        {
            "student.model": base,
            "student.tokenizer": tokenizer,
            "student.trust_remote_code": True if trust_remote_code else None,
            "paths.model_dir": model_dir,
            "merge.mode": mode,
            "merge.out": out,
            "merge.adapter_out": adapter_out,
            "merge.dtype": dtype,
            "merge.max_shard_size": max_shard_size,
        },
    )
    result = merge_from_config(config, adapters=list(adapters) or None, folds=folds, force=force)
    click.echo(f"merge: {result.summary()}", err=True)


@click.command()
@config_options
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="Merged full-precision model folder [default: quantize.model, or the merge output].",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    default=None,
    help="Table with a 'text' column to calibrate on [default: quantize.calibration, or "
    "PROCESSED_DIR/student/fold0/train.parquet: fold 0's student training prompts].",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Quantized model folder [default: quantize.out, or MODEL_DIR/final_model].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["compressed-tensors", "gptq"]),
    default=None,
    help="compressed-tensors: vLLM's native format, also read by the transformers engine; "
    "gptq: GPTQ v1 like the released model (vLLM only; runs on GPUs without Marlin such as the T4) "
    "[default: quantize.format].",
)
@click.option(
    "--calibration-samples",
    type=click.IntRange(min=1),
    default=None,
    help="Prompts drawn [default: quantize.calibration_samples].",
)
@click.option(
    "--seed", type=int, default=None, help="random_state of the draw [default: quantize.calibration_seed]."
)
@click.option(
    "--max-calibration-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Keep only the first N tokens of each prompt [default: quantize.max_calibration_tokens; "
    "null: whole prompts, as the reference].",
)
@click.option(
    "--bits", type=click.Choice(["4", "8"]), default=None, help="Weight bits [default: quantize.bits]."
)
@click.option(
    "--group-size",
    type=int,
    default=None,
    help="Inputs sharing a scale, -1: per channel [default: quantize.group_size].",
)
@click.option(
    "--act-order/--no-act-order",
    default=None,
    help="Quantize columns in activation order; the reference did not [default: quantize.act_order].",
)
@click.option(
    "--dampening",
    type=float,
    default=None,
    help="GPTQ damping fraction of the Hessian diagonal [default: quantize.dampening].",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default=None,
    help="dtype the model is calibrated in; auto keeps the checkpoint's [default: quantize.dtype].",
)
@click.option(
    "--max-shard-size", default=None, help="Largest safetensors shard [default: quantize.max_shard_size]."
)
@click.option("--force", is_flag=True, help="Replace OUT even if it holds another quantization.")
@click.option(
    "--trust-remote-code",
    is_flag=True,
    default=False,
    help="Allow code shipped in the model folder to run [default: student.trust_remote_code].",
)
@user_errors
def quantize(
    config_name: str,
    overrides: tuple[str, ...],
    model: Path | None,
    calibration: Path | None,
    out: Path | None,
    fmt: str | None,
    calibration_samples: int | None,
    seed: int | None,
    max_calibration_tokens: int | None,
    bits: str | None,
    group_size: int | None,
    act_order: bool | None,
    dampening: float | None,
    dtype: str | None,
    max_shard_size: str | None,
    force: bool,
    trust_remote_code: bool,
) -> None:
    """GPTQ-quantize the merged model (8-bit, group 128, symmetric, as the reference) and verify it.

    Needs llm-compressor (pip install 'wsdm[quantize]'), in an environment without vLLM.
    Runs on a GPU when one is visible, layer by layer; on CPU for small models.
    """
    quiet = quiet_requested(False)  # -q: the libraries' own bars hidden too (before they are imported)
    from .config import with_values
    from .quantize import quantize_from_config

    config = with_values(
        load(config_name, overrides),
        {
            "student.trust_remote_code": True if trust_remote_code else None,
            "quantize.model": model,
            "quantize.calibration": calibration,
            "quantize.out": out,
            "quantize.format": fmt,
            "quantize.calibration_samples": calibration_samples,
            "quantize.calibration_seed": seed,
            "quantize.max_calibration_tokens": max_calibration_tokens,
            "quantize.bits": int(bits) if bits else None,
            "quantize.group_size": group_size,
            "quantize.act_order": act_order,
            "quantize.dampening": dampening,
            "quantize.dtype": dtype,
            "quantize.max_shard_size": max_shard_size,
        },
    )
    with library_bars_hidden(quiet):
        result = quantize_from_config(config, force=force)
    click.echo(f"quantize: {result.summary()}", err=True)


def add_model_commands(group: click.Group) -> None:
    group.add_command(merge)
    group.add_command(quantize)
