"""`wsdm-serve convert SRC --to bf16|fp16|fp8 --out DIR`: a model folder in another precision."""

from __future__ import annotations

import re
from pathlib import Path

import click

from ..errors import WsdmError, user_errors

SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """``5GB``, ``500MB``, ``2GiB`` or a byte count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise WsdmError(f"--max-shard-size {text}: expected a size such as 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


@click.command("convert")
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--to",
    "target",
    type=click.Choice(["bf16", "fp16", "fp8"]),
    required=True,
    help="bf16/fp16: dequantized (or cast) full-precision weights, no quantization_config; "
    "fp8: FP8 E4M3 weights vLLM runs on FP8 tensor cores.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder of the converted model.")
@click.option(
    "--keep-bf16",
    default=None,
    help="--to fp8: linear layers also left in bf16 besides the head: none, first-last (the first and "
    "last decoder blocks), down-proj, or both comma-separated [default: the recipe of docs/precision.md].",
)
@click.option(
    "--weight-scales",
    type=click.Choice(["channel", "tensor"]),
    default=None,
    help="--to fp8: one FP8 scale per output channel or per weight tensor [default: channel].",
)
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard.")
@click.option(
    "--force", is_flag=True, help="Replace an existing --out (only after the new folder passes its checks)."
)
@click.pass_context
@user_errors
def convert(ctx, source, target, out, keep_bf16, weight_scales, max_shard_size, force) -> None:
    """Write SOURCE (full precision, GPTQ v1/v2, compressed-tensors integer or FP8) in another precision.

    Quantized weights are dequantized exactly (scale x (q - zero)); --to fp8 quantizes them (or the
    full-precision ones) without calibration data. The folder is checked before it is moved into
    place: a failed conversion leaves nothing behind.
    """
    from dataclasses import replace

    from ..models.convert import convert_checkpoint
    from ..models.fp8 import DEFAULT_RECIPE, MEASURED_AGREEMENT, keep_recipe

    if target != "fp8" and (keep_bf16 is not None or weight_scales is not None):
        raise WsdmError("--keep-bf16 and --weight-scales apply to --to fp8 only")
    recipe = keep_recipe(keep_bf16, DEFAULT_RECIPE)
    if weight_scales is not None:
        recipe = replace(recipe, weight_scales=weight_scales)
    result = convert_checkpoint(
        source,
        out,
        to=target,
        recipe=recipe,
        force=force,
        progress=not ctx.obj["quiet"],
        max_shard_bytes=parse_size(max_shard_size),
    )
    click.echo(f"convert: {result.summary()}", err=True)
    if target == "fp8" and not ctx.obj["quiet"]:
        click.echo(f"convert: note: {MEASURED_AGREEMENT}", err=True)
    click.echo(str(result.out))
