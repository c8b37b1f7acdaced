"""What a checkpoint holds, and its tensors read one at a time.

A conversion must know, before it reads a byte of weights, which of the formats it can invert the
folder is in (full precision, GPTQ v1/v2, compressed-tensors integer or FP8), and every shard must
be whole: a shard cut short by an interrupted copy would otherwise fail halfway through a 28 GB
write, or worse, not at all. Tensors are then read lazily, shard by shard, so converting a 14B
model never holds more than one output shard in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import WsdmError
from .weights import read_safetensors_header, weight_files

KINDS = ("full", "gptq", "ct-int", "ct-fp8")
"""full precision; GPTQ (qweight/qzeros/scales); compressed-tensors pack-quantized integers;
compressed-tensors float-quantized FP8."""

GPTQ_FORMATS = {"gptq": True, "gptq_v2": False}  # checkpoint_format -> stores zero - 1 (v1)
GPTQ_CONVERT_BITS = (2, 4, 8)


@dataclass(frozen=True)
class SourceFormat:
    """The weight format of a checkpoint, as far as converting it needs to know."""

    kind: str
    bits: int | None = None
    group_size: int | None = None  # -1: one scale per output channel
    symmetric: bool = True
    gptq_v1: bool = True
    act_order: bool = False
    strategy: str | None = None  # compressed-tensors: group, channel or tensor
    ignore: tuple[str, ...] = ()
    dtype: str | None = None  # the config's dtype of the unquantized tensors

    def describe(self) -> str:
        if self.kind == "full":
            return f"full precision ({self.dtype or 'dtype not set'})"
        if self.kind == "gptq":
            version = "v1" if self.gptq_v1 else "v2"
            order = ", act-order" if self.act_order else ""
            sym = "" if self.symmetric else ", asymmetric"
            return f"GPTQ {version} {self.bits}-bit, group {self.group_size}{sym}{order}"
        if self.kind == "ct-int":
            group = f"group {self.group_size}" if self.strategy == "group" else self.strategy
            order = ", act-order" if self.act_order else ""
            sym = "" if self.symmetric else ", asymmetric"
            return f"compressed-tensors int{self.bits} ({group}{sym}{order})"
        return f"compressed-tensors FP8 (per-{self.strategy} weight scales)"


def read_source_format(config: dict, config_path: Path) -> SourceFormat:
    """The format named by config.json; one line for anything convert cannot invert exactly."""
    dtype = config.get("dtype") or config.get("torch_dtype")
    dtype = dtype if isinstance(dtype, str) else None
    quant = config.get("quantization_config")
    if quant is None:
        return SourceFormat("full", dtype=dtype)
    if not isinstance(quant, dict):
        raise WsdmError(f"{config_path}: quantization_config must be an object")
    method = str(quant.get("quant_method", "")).lower()
    if method == "gptq":
        return _gptq_format(quant, config_path, dtype)
    if method == "compressed-tensors":
        return _compressed_tensors_format(quant, config_path, dtype)
    raise WsdmError(
        f"{config_path}: quant_method {quant.get('quant_method')!r} is not one convert can read; it reads "
        "full-precision, GPTQ (v1, v2) and compressed-tensors (pack-quantized, float-quantized) checkpoints"
    )


def _gptq_format(quant: dict, path: Path, dtype: str | None) -> SourceFormat:
    fmt = str(quant.get("checkpoint_format") or quant.get("format") or "gptq").lower()
    if fmt not in GPTQ_FORMATS:
        raise WsdmError(f"{path}: gptq checkpoint_format {fmt!r} is unknown; expected gptq (v1) or gptq_v2")
    bits = quant.get("bits")
    if bits not in GPTQ_CONVERT_BITS:
        raise WsdmError(f"{path}: gptq bits {bits!r}; convert reads 2-, 4- and 8-bit GPTQ weights")
    group = quant.get("group_size", -1)
    if not isinstance(group, int) or isinstance(group, bool) or (group != -1 and group <= 0):
        raise WsdmError(f"{path}: gptq group_size must be -1 or a positive integer, found {group!r}")
    return SourceFormat(
        "gptq",
        bits=bits,
        group_size=group,
        symmetric=bool(quant.get("sym", True)),
        gptq_v1=GPTQ_FORMATS[fmt],
        act_order=bool(quant.get("desc_act", False)),
        dtype=dtype,
    )


def _compressed_tensors_format(quant: dict, path: Path, dtype: str | None) -> SourceFormat:
    groups = quant.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise WsdmError(f"{path}: compressed-tensors quantization_config has no config_groups")
    found = set()
    for name, group in groups.items():
        weights = (group or {}).get("weights") if isinstance(group, dict) else None
        if not isinstance(weights, dict):
            raise WsdmError(f"{path}: config_groups.{name} quantizes no weights")
        fmt = group.get("format") or quant.get("format")
        found.add(
            (
                fmt,
                weights.get("type", "int"),
                weights.get("num_bits"),
                weights.get("strategy"),
                weights.get("group_size"),
                bool(weights.get("symmetric", True)),
                weights.get("actorder") not in (None, False),
            )
        )
    if len(found) != 1:
        raise WsdmError(f"{path}: config_groups use different schemes; convert reads one scheme per model")
    fmt, kind, bits, strategy, group_size, symmetric, act_order = found.pop()
    ignore = tuple(str(name) for name in quant.get("ignore") or [])
    if fmt == "pack-quantized" and kind == "int" and strategy in ("group", "channel"):
        return SourceFormat(
            "ct-int",
            bits=bits,
            group_size=group_size if strategy == "group" else -1,
            symmetric=symmetric,
            act_order=act_order,
            strategy=strategy,
            ignore=ignore,
            dtype=dtype,
        )
    if fmt == "float-quantized" and kind == "float" and bits == 8 and strategy in ("channel", "tensor"):
        return SourceFormat("ct-fp8", bits=8, strategy=strategy, ignore=ignore, dtype=dtype)
    raise WsdmError(
        f"{path}: compressed-tensors format {fmt!r} with {kind}{bits} weights (strategy {strategy}) is not one "
        "convert can read; it reads pack-quantized integer and float-quantized FP8 (channel or tensor) weights"
    )


# --------------------------------------------------------------------------- tensors


@dataclass
class ShardedTensors:
    """Every tensor of a folder's safetensors shards, by name; headers checked, data read on demand."""

    model_dir: Path
    files: list[Path]
    headers: dict[str, dict] = field(default_factory=dict)  # name -> {"dtype", "shape"}
    location: dict[str, Path] = field(default_factory=dict)
    _handles: dict[Path, object] = field(default_factory=dict)

    @classmethod
    def open(cls, model_dir: str | Path) -> ShardedTensors:
        model_dir = Path(model_dir)
        files = weight_files(model_dir)
        tensors = cls(model_dir, files)
        for path in files:
            try:
                header = read_safetensors_header(path)
            except (OSError, ValueError) as exc:
                raise WsdmError(f"{path}: {exc}") from None
            for name, entry in header.items():
                if name in tensors.location:
                    raise WsdmError(f"{path}: tensor {name} is also in {tensors.location[name].name}")
                tensors.headers[name] = {"dtype": entry.get("dtype"), "shape": list(entry.get("shape", []))}
                tensors.location[name] = path
        if not tensors.headers:
            raise WsdmError(f"{model_dir}: the weight files hold no tensors")
        return tensors

    def names(self) -> list[str]:
        return sorted(self.headers)

    def dtype(self, name: str) -> str:
        return str(self.headers[name]["dtype"])

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self.headers[name]["shape"])

    def get(self, name: str):
        """One tensor (torch), read from its shard."""
        from safetensors import safe_open

        path = self.location[name]
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = safe_open(str(path), framework="pt")
        return handle.get_tensor(name)

    def close(self) -> None:
        self._handles.clear()
