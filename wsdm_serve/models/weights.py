"""A model folder's weight files, read from their headers only: present, complete, and as the config says.

A shard cut short by an interrupted copy, an index naming a missing shard, or weights of another
shape than config.json promises are found here in well under a second, without reading tensor data
(the safetensors header records where every tensor's bytes end). Problems go into a
:class:`ModelReport` as one line each.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import WsdmError
from .report import ModelReport

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
MAX_HEADER_BYTES = 100 * 2**20
LAYER_PATTERN = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# Tensors that only describe how another tensor was quantized: not parameters of their own.
QUANT_AUX_SUFFIXES = (
    ".qzeros",
    ".scales",
    ".g_idx",
    ".weight_scale",
    ".weight_zero_point",
    ".weight_g_idx",
    ".weight_shape",
    ".input_scale",
)
PACKED_SUFFIXES = (".qweight", ".weight_packed")


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file; raises ValueError saying why it is unusable.

    The header records where every tensor's bytes end, so a file cut short by an interrupted copy
    or download is detected here without reading the data.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"only {size} bytes, not a safetensors file")
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES or length + 8 > size:
            raise ValueError("header length is implausible; truncated or not a safetensors file")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    header.pop("__metadata__", None)
    end = 0
    for name, entry in header.items():
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise ValueError(f"header entry {name!r} has no data_offsets") from None
    expected = 8 + length + end
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise ValueError(f"{state}: {size:,} bytes on disk, the header describes {expected:,}")
    return header


@dataclass
class WeightsSummary:
    tensors: dict[str, dict]
    files: list[Path]
    total_bytes: int


def find_weights(report: ModelReport) -> WeightsSummary | None:
    """Locate the weight files and check that index, shards and headers agree."""
    folder = report.path
    index_path = folder / SAFETENSORS_INDEX
    if index_path.is_file():
        return _sharded_safetensors(report, index_path)
    single = folder / "model.safetensors"
    if single.is_file():
        return _safetensors_files(report, [single], expected=None)
    others = sorted(folder.glob("*.safetensors"))
    if others:
        return _safetensors_files(report, others, expected=None)
    bin_index = folder / BIN_INDEX
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bin_index.is_file() or bins:
        return _pytorch_bins(report, bin_index, bins)
    report.problem(
        f"{folder}: no weights (model.safetensors, a {SAFETENSORS_INDEX} with its shards, or pytorch_model.bin)"
    )
    return None


def _read_index(report: ModelReport, index_path: Path) -> dict[str, str] | None:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.problem(f"{index_path}: not valid JSON ({exc})")
        return None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        report.problem(f"{index_path}: no weight_map")
        return None
    return weight_map


def _missing_files(report: ModelReport, index_path: Path, names: list[str]) -> list[str]:
    missing = [name for name in names if not (report.path / name).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        report.problem(
            f"{index_path.name} lists {len(names)} shard(s); {len(missing)} missing from {report.path}: {shown}"
        )
    return missing


def _sharded_safetensors(report: ModelReport, index_path: Path) -> WeightsSummary | None:
    weight_map = _read_index(report, index_path)
    if weight_map is None:
        return None
    shards = sorted(set(weight_map.values()))
    missing = _missing_files(report, index_path, shards)
    present = [report.path / name for name in shards if name not in missing]
    summary = _safetensors_files(report, present, expected=weight_map)
    if summary is not None:
        summary.files = [report.path / name for name in shards]
    return summary


def _safetensors_files(
    report: ModelReport, files: list[Path], expected: dict[str, str] | None
) -> WeightsSummary | None:
    tensors: dict[str, dict] = {}
    total = 0
    for path in files:
        try:
            header = read_safetensors_header(path)
        except (OSError, ValueError) as exc:
            report.problem(f"{path}: {exc}")
            continue
        total += path.stat().st_size
        if expected is not None:
            claimed = [name for name, shard in expected.items() if shard == path.name]
            absent = [name for name in claimed if name not in header]
            if absent:
                report.problem(
                    f"{path.name}: the index places {len(absent)} tensor(s) in this shard that it does not "
                    f"hold (e.g. {absent[0]})"
                )
        tensors.update(header)
    if not tensors:
        return None
    report.fact(
        "weights", f"{len(files)} safetensors file(s), {total / 2**30:.2f} GiB, {len(tensors):,} tensors"
    )
    return WeightsSummary(tensors=tensors, files=list(files), total_bytes=total)


def _pytorch_bins(report: ModelReport, bin_index: Path, bins: list[Path]) -> WeightsSummary | None:
    if bin_index.is_file():
        weight_map = _read_index(report, bin_index)
        if weight_map is None:
            return None
        shards = sorted(set(weight_map.values()))
        _missing_files(report, bin_index, shards)
        bins = [report.path / name for name in shards]
    total = sum(path.stat().st_size for path in bins if path.is_file())
    report.fact(
        "weights", f"{len(bins)} pytorch .bin file(s), {total / 2**30:.2f} GiB (contents not inspected)"
    )
    return None


def check_weights_against_config(
    report: ModelReport, weights: WeightsSummary, config: dict, quant: dict | None
) -> None:
    """Shapes and names in the weights must match what the config promises."""
    tensors = weights.tensors
    hidden = config.get("hidden_size")
    vocab = config.get("vocab_size")
    layers = config.get("num_hidden_layers")
    embed = next((n for n in tensors if n.endswith("embed_tokens.weight")), None)
    if embed is not None and isinstance(hidden, int) and isinstance(vocab, int):
        shape = list(tensors[embed].get("shape", []))
        if shape != [vocab, hidden]:
            report.problem(
                f"weights and config.json disagree: {embed} has shape {shape}, config says "
                f"vocab_size {vocab} x hidden_size {hidden}"
            )
    indices = {int(m.group(1)) for name in tensors if (m := LAYER_PATTERN.search(name))}
    if indices and isinstance(layers, int) and max(indices) + 1 != layers:
        report.problem(
            f"weights and config.json disagree: the weights hold {max(indices) + 1} layers, "
            f"config says num_hidden_layers {layers}"
        )
    tied = config.get("tie_word_embeddings", True)
    if not tied and not any(n.endswith("lm_head.weight") or n.endswith("lm_head.qweight") for n in tensors):
        report.problem(
            "weights have no lm_head.weight although config.json says tie_word_embeddings false: "
            "the output head would be random"
        )
    packed = [n for n in tensors if n.endswith(PACKED_SUFFIXES)]
    method = str(quant.get("quant_method", "")).lower() if quant else ""
    if packed and not quant:
        report.problem(
            f"weights hold packed quantized tensors (e.g. {packed[0]}) but config.json has no quantization_config"
        )
    if method == "gptq" and not any(n.endswith(".qweight") for n in tensors):
        report.problem("config.json says gptq but the weights hold no .qweight tensors")
    if method == "compressed-tensors" and quant.get("format") == "pack-quantized" and not packed:
        report.problem(
            "config.json says compressed-tensors pack-quantized but no .weight_packed tensors exist"
        )
    dtypes = Counter(str(entry.get("dtype")) for entry in tensors.values())
    report.fact("tensor dtypes", ", ".join(f"{d} x{c}" for d, c in dtypes.most_common()))
    count = estimate_parameters(tensors, quant)
    scaled = f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"
    report.fact("parameters", f"~{scaled} (from the weight headers)")


def estimate_parameters(tensors: dict[str, dict], quant: dict | None) -> int:
    """Parameter count; packed int32 tensors hold 32/bits values each, quantization metadata none."""
    bits = _quant_bits(quant)
    total = 0
    for name, entry in tensors.items():
        if name.endswith(QUANT_AUX_SUFFIXES):
            continue
        count = math.prod(int(d) for d in entry.get("shape", []))
        if name.endswith(PACKED_SUFFIXES) and bits:
            count = count * 32 // bits
        total += count
    return total


def _quant_bits(quant: dict | None) -> int | None:
    if not quant:
        return None
    if isinstance(quant.get("bits"), int):
        return quant["bits"]
    for group in (quant.get("config_groups") or {}).values():
        bits = (group.get("weights") or {}).get("num_bits") if isinstance(group, dict) else None
        if isinstance(bits, int):
            return bits
    return None


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors shards of a folder (from its index when there is one); raises when any is missing.

    Readers of tensor data (convert, the quantization inspection) need every shard; `check-model`
    reports the same faults as problems instead (:func:`find_weights`).
    """
    index = model_dir / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise WsdmError(f"{index}: not a valid safetensors index ({exc})") from None
        files = [model_dir / name for name in names]
        missing = [path.name for path in files if not path.is_file()]
        if missing:
            raise WsdmError(
                f"{index}: lists {missing[0]}, which is missing ({len(missing)} shard(s) missing)"
            )
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        return files
    if (model_dir / BIN_INDEX).is_file() or list(model_dir.glob("pytorch_model*.bin")):
        raise WsdmError(
            f"{model_dir}: the weights are pytorch .bin files; only safetensors weights can be read"
        )
    raise WsdmError(f"{model_dir}: no .safetensors weights; not a model folder")
