"""Writing a converted folder and checking it before it is moved into place.

Tensors go into safetensors shards of bounded size, named and indexed as transformers names its own;
the tokenizer and other side files are copied; then the folder is read back and compared tensor by
tensor with what the source's headers say it must hold, so a bug or a full disk shows up before the
folder replaces anything.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ..errors import WsdmError
from .checkpoint import ShardedTensors, SourceFormat
from .checks import check_files
from .dequantize import conversion_units, module_shape
from .folder import read_model_config
from .fp8 import Fp8Recipe, is_block_linear, matches
from .weights import BIN_INDEX, SAFETENSORS_INDEX

log = logging.getLogger(__name__)

CONVERT_INFO = "convert_info.json"
SKIPPED_FILES = {
    "config.json",
    SAFETENSORS_INDEX,
    BIN_INDEX,
    "quantize_config.json",
    "quantize_info.json",
    CONVERT_INFO,
}
"""Not copied: weights are rewritten, config.json is rewritten, and the quantizers' side files
(auto-gptq's quantize_config.json, wsdm-train's quantize_info.json) would describe weights that
are no longer there."""


class ShardWriter:
    """Tensors collected into safetensors shards of bounded size, named and indexed like
    transformers' own (``model.safetensors``, or ``model-0000k-of-0000n.safetensors`` + index)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        save_file(self.pending, str(self.folder / f".shard-{len(self.shards)}"), metadata={"format": "pt"})
        self.shards.append(sorted(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        self.flush()
        count = len(self.shards)
        names = (
            ["model.safetensors"]
            if count == 1
            else [f"model-{k + 1:05d}-of-{count:05d}.safetensors" for k in range(count)]
        )
        umask = os.umask(0)
        os.umask(umask)
        for k, name in enumerate(names):
            path = self.folder / name
            (self.folder / f".shard-{k}").rename(path)
            path.chmod(0o666 & ~umask)  # safetensors writes 0600; a model file should look like any other
        if count > 1:
            weight_map = {
                tensor: name for name, tensors in zip(names, self.shards, strict=True) for tensor in tensors
            }
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": dict(sorted(weight_map.items())),
            }
            (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return names


def copy_side_files(source: Path, dest: Path) -> None:
    """Tokenizer, chat template, generation config, licence: every top-level non-weight file."""
    for path in sorted(source.iterdir()):
        if path.name in SKIPPED_FILES or path.name.startswith("."):
            continue
        if path.suffix in (".safetensors", ".bin", ".pt", ".pth") or path.name.startswith("pytorch_model"):
            continue
        if path.is_dir():
            log.warning("%s: folder not copied (convert copies the model folder's files)", path)
            continue
        shutil.copy2(path, dest / path.name)


def expected_tensors(
    tensors: ShardedTensors, source: SourceFormat, modules: dict, to: str, recipe: Fp8Recipe, layers: int
) -> dict:
    """name -> (safetensors dtype, shape) the output must hold, derived from the source headers alone."""
    dense = {"fp8": "BF16", "bf16": "BF16", "fp16": "F16"}[to]
    ignore = recipe.ignore(layers) if to == "fp8" else []
    expected: dict[str, tuple] = {}

    def weight(module: str, shape: tuple[int, int]) -> None:
        name = f"{module}.weight"
        if to == "fp8" and is_block_linear(name, shape) and not matches(module, ignore):
            expected[name] = ("F8_E4M3", shape)
            expected[f"{module}.weight_scale"] = (
                "F32",
                (shape[0], 1) if recipe.weight_scales == "channel" else (1,),
            )
        else:
            expected[name] = (dense, shape)

    for kind, name in conversion_units(tensors, modules):
        if kind == "module":
            weight(name, module_shape(tensors, name, source))
            continue
        dtype, shape = tensors.dtype(name), tensors.shape(name)
        if dtype not in ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"):
            expected[name] = (dtype, shape)
        elif to == "fp8" and is_block_linear(name, shape):
            weight(name[: -len(".weight")], shape)
        else:
            expected[name] = (dense, shape)
    return expected


def verify_converted(
    folder: Path, to: str, recipe: Fp8Recipe, num_layers: int, expected: dict[str, tuple]
) -> None:
    """Read the written folder back: shards whole, every tensor where and what it should be,
    config and weights consistent (check-model's file checks). One line for the first problem."""
    report, _ = check_files(folder)
    if not report.ok:
        raise WsdmError(f"the converted folder fails its checks: {report.problems[0]}")
    written = ShardedTensors.open(folder)
    missing = sorted(set(expected) - set(written.headers))
    extra = sorted(set(written.headers) - set(expected))
    if missing or extra:
        raise WsdmError(
            f"the converted folder holds the wrong tensors: missing {missing[:1]}, unexpected {extra[:1]}"
        )
    for name, (dtype, shape) in expected.items():
        if (written.dtype(name), written.shape(name)) != (dtype, shape):
            raise WsdmError(
                f"the converted folder's {name} is {written.dtype(name)} {written.shape(name)}, expected {dtype} {shape}"
            )
    config = read_model_config(folder)
    if to != "fp8" and "quantization_config" in config:
        raise WsdmError("the converted folder's config.json still has a quantization_config")
    if to == "fp8":
        from compressed_tensors.quantization import QuantizationConfig

        try:
            QuantizationConfig.model_validate(config["quantization_config"])
        except Exception as exc:  # noqa: BLE001 - pydantic errors are long
            raise WsdmError(
                f"the converted folder's quantization_config does not parse ({type(exc).__name__})"
            ) from exc
