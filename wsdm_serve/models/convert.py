"""`wsdm-serve convert`: a checkpoint in another precision, written atomically and checked first.

``--to bf16|fp16`` dequantizes GPTQ (v1, v2) and compressed-tensors integer or FP8 checkpoints
exactly (see :mod:`.dequantize`) or casts a full-precision one, drops ``quantization_config`` and
keeps config and tokenizer, so the transformers engine (or any loader) runs the result without a
quantization backend. ``--to fp8`` writes FP8 E4M3 weights with the recipe of :mod:`.fp8`, from a
full-precision checkpoint directly or from a quantized one through its exact dequantized weights.

The folder is written next to ``--out`` under a hidden name, tensor by tensor into shards of at most
``max_shard_bytes``, read back and checked, and only then renamed into place, as
download-final-model does: a failed or interrupted conversion leaves nothing behind, and an
existing ``--out`` is replaced (with ``--force``) only by a folder that passed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import WsdmError
from ..outputs import atomic_directory
from .checkpoint import ShardedTensors, SourceFormat, read_source_format
from .dequantize import (
    check_gptq_zero_points,
    conversion_units,
    dequantize_module,
    module_shape,
    quantized_modules,
)
from .folder import read_model_config
from .fp8 import DEFAULT_RECIPE, Fp8Recipe, is_block_linear, matches, quantization_config, quantize_weight
from .output import CONVERT_INFO, ShardWriter, copy_side_files, expected_tensors, verify_converted
from .shape import text_config

log = logging.getLogger(__name__)

TARGETS = {"bf16": "bfloat16", "fp16": "float16", "fp8": "fp8"}
DEFAULT_SHARD_BYTES = 5 * 10**9


@dataclass
class ConvertResult:
    out: Path
    source: str
    target: str
    recipe: str | None
    dequantized: int
    fp8_layers: int
    total_bytes: int
    seconds: float

    def summary(self) -> str:
        what = f"{self.dequantized} layers dequantized" if self.dequantized else "no quantized layers"
        fp8 = f", {self.fp8_layers} layers in FP8 ({self.recipe})" if self.recipe else ""
        return (
            f"{self.source} -> {self.target}: {what}{fp8}, {self.total_bytes / 2**30:.2f} GiB, "
            f"{self.seconds:.1f} s -> {self.out}"
        )


# --------------------------------------------------------------------------- checks before work


def check_paths(source: Path, out: Path, force: bool) -> None:
    if not source.exists():
        raise WsdmError(f"{source}: model folder not found")
    if not source.is_dir():
        raise WsdmError(f"{source}: is a file, expected a model folder")
    if not (source / "config.json").is_file():
        raise WsdmError(f"{source}: no config.json; not a model folder")
    src, dest = source.resolve(), out.resolve()
    if dest == src or src in dest.parents:
        raise WsdmError(f"{out}: is inside the source folder {source}; write the output elsewhere")
    if dest in src.parents:
        raise WsdmError(f"{out}: contains the source folder {source}; replacing it would delete the source")
    if out.exists() and not out.is_dir():
        raise WsdmError(f"{out}: is a file, expected a folder path")
    if out.exists() and not force:
        raise WsdmError(
            f"{out}: already exists; pass --force to replace it (only after the new folder passes)"
        )


def _output_bytes(
    tensors: ShardedTensors, source: SourceFormat, modules: dict, to: str, ignore: list[str]
) -> int:
    """About what the output takes on disk (for the free-space check): 2 bytes a value, 1 in FP8."""
    import math

    total = 0
    for kind, name in conversion_units(tensors, modules):
        shape = module_shape(tensors, name, source) if kind == "module" else tensors.shape(name)
        module = name if kind == "module" else name.rsplit(".", 1)[0]
        fp8 = to == "fp8" and len(shape) == 2 and ".layers." in module and not matches(module, ignore)
        total += math.prod(shape) * (1 if fp8 else 2)
    return total


# --------------------------------------------------------------------------- writing


def _check_no_stray_quantized(tensors: ShardedTensors, source: SourceFormat, modules: dict) -> None:
    markers = (".qweight", ".weight_packed", ".qzeros", ".weight_zero_point")
    stray = [
        name for name in tensors.names() if name.endswith(markers) and name.rsplit(".", 1)[0] not in modules
    ]
    if stray:
        raise WsdmError(
            f"{tensors.model_dir}: {stray[0]} is quantized but config.json describes {source.describe()}; "
            "the config does not belong to these weights"
        )


def write_converted(
    tensors: ShardedTensors,
    source: SourceFormat,
    folder: Path,
    to: str,
    recipe: Fp8Recipe,
    num_layers: int,
    max_shard_bytes: int,
    progress: bool,
) -> tuple[int, int, int]:
    """Write every tensor of ``tensors`` converted to ``to``; returns (dequantized, fp8 layers, bytes)."""
    import torch
    from tqdm.auto import tqdm

    modules = quantized_modules(tensors.names(), source, tensors.dtype)
    _check_no_stray_quantized(tensors, source, modules)
    dense = torch.bfloat16 if to == "fp8" else getattr(torch, TARGETS[to])
    ignore = recipe.ignore(num_layers) if to == "fp8" else []
    writer = ShardWriter(folder, max_shard_bytes)
    dequantized = fp8_layers = 0

    def emit_weight(module: str, weight) -> None:
        nonlocal fp8_layers
        name = f"{module}.weight"
        if to == "fp8" and is_block_linear(name, tuple(weight.shape)) and not matches(module, ignore):
            values, scale = quantize_weight(weight, recipe)
            writer.add(name, values)
            writer.add(f"{module}.weight_scale", scale)
            fp8_layers += 1
        else:
            writer.add(name, _cast(name, weight, dense))

    units = conversion_units(tensors, modules)
    for kind, name in tqdm(units, desc="convert", unit="tensor", disable=not progress, dynamic_ncols=True):
        if kind == "module":
            parts = {
                part: tensors.get(f"{name}.{part}")
                for part in modules[name]
                if f"{name}.{part}" in tensors.headers
            }
            emit_weight(name, dequantize_module(name, parts, source))
            dequantized += 1
            continue
        tensor = tensors.get(name)
        if not tensor.is_floating_point():
            writer.add(name, tensor)
        elif to == "fp8" and is_block_linear(name, tuple(tensor.shape)):
            emit_weight(name[: -len(".weight")], tensor)
        else:
            writer.add(name, tensor if tensor.dtype == dense else _cast(name, tensor, dense))
    writer.finish()
    return dequantized, fp8_layers, writer.total_bytes


def _cast(name: str, tensor, dtype):
    """``tensor`` in ``dtype``; a value beyond fp16's range (65504) would silently become inf."""
    import torch

    cast = tensor.to(dtype)
    if dtype == torch.float16 and not torch.isfinite(cast).all() and torch.isfinite(tensor).all():
        raise WsdmError(f"{name}: holds values beyond float16's range (65504); convert --to bf16 instead")
    return cast


def converted_config(config: dict, to: str, recipe: Fp8Recipe, num_layers: int) -> dict:
    """config.json of the result: no quantization_config (or the FP8 one), the new dtype."""
    new = {key: value for key, value in config.items() if key != "quantization_config"}
    dtype = "bfloat16" if to == "fp8" else TARGETS[to]
    keys = [key for key in ("dtype", "torch_dtype") if key in config] or ["dtype"]
    for key in keys:
        new[key] = dtype
    if to == "fp8":
        new["quantization_config"] = quantization_config(recipe, num_layers)
    return new


def convert_checkpoint(
    source: str | Path,
    out: str | Path,
    *,
    to: str,
    recipe: Fp8Recipe = DEFAULT_RECIPE,
    force: bool = False,
    progress: bool = True,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> ConvertResult:
    """Write ``source`` converted to ``to`` (bf16, fp16 or fp8) as the folder ``out``."""
    started = time.time()
    source, out = Path(source), Path(out)
    if to not in TARGETS:
        raise WsdmError(f"--to {to}: choose one of {', '.join(TARGETS)}")
    check_paths(source, out, force)
    config = read_model_config(source)
    fmt = read_source_format(config, source / "config.json")
    if to == "fp8" and fmt.kind == "ct-fp8":
        raise WsdmError(
            f"{source}: is already an FP8 checkpoint; convert it --to bf16 first to change its recipe"
        )
    layers = text_config(config).get("num_hidden_layers")
    if not isinstance(layers, int) or layers <= 0:
        raise WsdmError(f"{source / 'config.json'}: num_hidden_layers must be a positive integer")
    tensors = ShardedTensors.open(source)
    modules = quantized_modules(tensors.names(), fmt, tensors.dtype)
    check_gptq_zero_points(tensors, fmt, modules)
    ignore = recipe.ignore(layers) if to == "fp8" else []
    need = _output_bytes(tensors, fmt, modules, to, ignore)
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if need > free:
        raise WsdmError(
            f"{out}: the converted model needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB are free"
        )
    try:
        with atomic_directory(out) as tmp:
            dequantized, fp8_layers, total = write_converted(
                tensors, fmt, tmp, to, recipe, layers, max_shard_bytes, progress
            )
            new_config = converted_config(config, to, recipe, layers)
            (tmp / "config.json").write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n")
            copy_side_files(source, tmp)
            info = {
                "source": str(source),
                "source_format": fmt.describe(),
                "to": to,
                "recipe": recipe.describe() if to == "fp8" else None,
                "libraries": _versions(),
            }
            verify_converted(
                tmp, to, recipe, layers, expected_tensors(tensors, fmt, modules, to, recipe, layers)
            )
            info["seconds"] = round(time.time() - started, 1)
            (tmp / CONVERT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    finally:
        tensors.close()
    return ConvertResult(
        out,
        fmt.describe(),
        to,
        recipe.name if to == "fp8" else None,
        dequantized,
        fp8_layers,
        total,
        time.time() - started,
    )


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("compressed-tensors", "torch", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
