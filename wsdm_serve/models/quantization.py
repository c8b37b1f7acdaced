"""Quantized checkpoints: which formats the judge accepts, and a strict check of one on disk.

Two weight-only integer formats load in vLLM with its fast kernels (Marlin/Machete on Ampere and
newer) and are what `wsdm-train quantize` writes:

* ``compressed-tensors`` ``pack-quantized`` (llm-compressor's format; the transformers engine reads
  it too, with the ``compressed-tensors`` package);
* ``gptq`` with v1 zero points (the released model's format; older GPUs such as the T4 run it with
  vLLM's non-Marlin GPTQ kernel).

A checkpoint that merely *says* it is one of them is not enough: some GPTQ writers label v2 zero
points as ``gptq``, which loads without error and silently shifts every weight by one step. So the
check reads the weights' headers (and, for GPTQ, one zero-point tensor) as well as config.json.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import WsdmError
from .folder import read_model_config
from .weights import weight_files

WEIGHT_FORMATS = ("compressed-tensors", "gptq")


@dataclass(frozen=True)
class QuantSpec:
    """What the quantized judge is expected to be: the reference's GPTQ 8-bit, group 128, symmetric."""

    bits: int = 8
    group_size: int = 128
    symmetric: bool = True
    act_order: bool = False


REFERENCE_SPEC = QuantSpec()


@dataclass
class QuantizedCheckpoint:
    """What :func:`verify_quantized_checkpoint` found."""

    method: str
    format: str
    bits: int
    group_size: int
    symmetric: bool
    act_order: bool
    quantized_modules: int
    ignored: list[str] = field(default_factory=list)

    def describe(self) -> str:
        order = "act-order" if self.act_order else "no act-order"
        sym = "symmetric" if self.symmetric else "asymmetric"
        return (
            f"{self.method} ({self.format}), {self.bits}-bit, group {self.group_size}, {sym}, {order}; "
            f"{self.quantized_modules} linear layers quantized"
        )


# --------------------------------------------------------------------------- safetensors headers


def read_tensor_headers(model_dir: str | Path) -> dict[str, tuple[str, tuple[int, ...], Path]]:
    """name -> (dtype, shape, file) for every tensor, from the headers only (no weights are read)."""
    from safetensors import safe_open

    headers: dict[str, tuple[str, tuple[int, ...], Path]] = {}
    for path in weight_files(Path(model_dir)):
        try:
            with safe_open(str(path), framework="numpy") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                    piece = handle.get_slice(name)
                    headers[name] = (piece.get_dtype(), tuple(piece.get_shape()), path)
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
            raise WsdmError(f"{path}: cannot read the safetensors header ({exc})") from exc
    return headers


def _read_small_tensor(path: Path, name: str):
    """One tensor as numpy: int32 and int64 only, so no torch and no bf16 support is needed."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return handle.get_tensor(name)


# --------------------------------------------------------------------------- the check


def verify_quantized_checkpoint(
    model_dir: str | Path, expect: QuantSpec | None = REFERENCE_SPEC
) -> QuantizedCheckpoint:
    """Check that ``model_dir`` is a weight-only integer checkpoint vLLM runs with its fast kernels.

    Checks config.json's ``quantization_config`` (format, bits, group size, symmetry, activation
    order; against ``expect`` unless it is None) and the weights themselves: every quantized
    layer has its companion tensors with shapes that fit the bits and group size, no linear layer
    of a transformer block was left in full precision, and GPTQ zero points are v1.
    Raises :class:`WsdmError` with one line naming the first problem.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    quant = read_model_config(model_dir).get("quantization_config")
    if quant is None:
        raise WsdmError(f"{config_path}: no quantization_config; the model is not quantized")
    if not isinstance(quant, dict):
        raise WsdmError(f"{config_path}: quantization_config must be an object")
    method = str(quant.get("quant_method", "")).lower()
    if method == "compressed-tensors":
        found = _compressed_tensors_config(quant, config_path)
    elif method == "gptq":
        found = _gptq_config(quant, config_path)
    else:
        raise WsdmError(
            f"{config_path}: quant_method {quant.get('quant_method')!r}; expected one of "
            f"{', '.join(WEIGHT_FORMATS)} (weight-only integer formats vLLM runs with fast kernels)"
        )
    if expect is not None:
        for name, want, got in (
            ("bits", expect.bits, found.bits),
            ("group size", expect.group_size, found.group_size),
            ("symmetric", expect.symmetric, found.symmetric),
            ("activation order", expect.act_order, found.act_order),
        ):
            if want != got:
                raise WsdmError(f"{config_path}: {method} {name} is {got}, expected {want}")
    headers = read_tensor_headers(model_dir)
    if method == "compressed-tensors":
        found.quantized_modules = _check_packed_tensors(headers, found, model_dir)
    else:
        found.quantized_modules = _check_gptq_tensors(headers, found, model_dir)
    _check_no_full_precision_block_linears(headers, found, model_dir)
    return found


def _compressed_tensors_config(quant: dict, path: Path) -> QuantizedCheckpoint:
    fmt = quant.get("format")
    if fmt != "pack-quantized":
        raise WsdmError(f"{path}: compressed-tensors format is {fmt!r}, expected 'pack-quantized'")
    status = quant.get("quantization_status")
    if status not in (None, "compressed"):
        raise WsdmError(
            f"{path}: compressed-tensors quantization_status is {status!r}, expected 'compressed'"
        )
    groups = quant.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise WsdmError(f"{path}: compressed-tensors quantization_config has no config_groups")
    schemes = []
    for name, group in groups.items():
        weights = (group or {}).get("weights") or {}
        if not weights:
            raise WsdmError(f"{path}: config_groups.{name} quantizes no weights")
        if group.get("input_activations") or group.get("output_activations"):
            raise WsdmError(f"{path}: config_groups.{name} quantizes activations; expected weight-only")
        if group.get("format", fmt) != "pack-quantized":
            raise WsdmError(f"{path}: config_groups.{name} format is {group.get('format')!r}")
        if weights.get("type", "int") != "int" or weights.get("dynamic"):
            raise WsdmError(f"{path}: config_groups.{name} weights must be static integers")
        if weights.get("strategy") not in ("group", "channel"):
            raise WsdmError(f"{path}: config_groups.{name} strategy is {weights.get('strategy')!r}")
        group_size = weights.get("group_size") if weights.get("strategy") == "group" else -1
        act_order = weights.get("actorder") not in (None, False)
        schemes.append((weights.get("num_bits"), group_size, bool(weights.get("symmetric")), act_order))
    if len(set(schemes)) != 1:
        raise WsdmError(f"{path}: config_groups use different schemes {sorted(set(schemes))}")
    bits, group_size, symmetric, act_order = schemes[0]
    return QuantizedCheckpoint(
        "compressed-tensors", fmt, bits, group_size, symmetric, act_order, 0, list(quant.get("ignore") or [])
    )


def _gptq_config(quant: dict, path: Path) -> QuantizedCheckpoint:
    fmt = str(quant.get("checkpoint_format") or quant.get("format") or "gptq").lower()
    if fmt != "gptq":
        raise WsdmError(
            f"{path}: gptq checkpoint_format is {fmt!r}; only v1 ('gptq') checkpoints load correctly in vLLM"
        )
    return QuantizedCheckpoint(
        "gptq",
        "gptq",
        quant.get("bits"),
        quant.get("group_size"),
        bool(quant.get("sym", True)),
        bool(quant.get("desc_act", False)),
        0,
    )


def _modules_with(headers: dict, suffix: str) -> list[str]:
    return sorted(name[: -len(suffix)] for name in headers if name.endswith(suffix))


def _expect_shape(headers: dict, name: str, shape: tuple[int, ...], model_dir: Path, why: str) -> None:
    if name not in headers:
        raise WsdmError(f"{model_dir}: {name} is missing ({why})")
    if headers[name][1] != shape:
        raise WsdmError(f"{model_dir}: {name} has shape {headers[name][1]}, expected {shape} ({why})")


def _check_packed_tensors(headers: dict, found: QuantizedCheckpoint, model_dir: Path) -> int:
    modules = _modules_with(headers, ".weight_packed")
    if not modules:
        raise WsdmError(f"{model_dir}: config says pack-quantized but no .weight_packed tensors exist")
    per_word = 32 // found.bits
    for module in modules:
        if f"{module}.weight" in headers:
            raise WsdmError(f"{model_dir}: {module} has both a packed and a full-precision weight")
        dtype, packed_shape, _ = headers[f"{module}.weight_packed"]
        if dtype != "I32" or len(packed_shape) != 2:
            raise WsdmError(
                f"{model_dir}: {module}.weight_packed is {dtype} {packed_shape}, expected 2-D int32"
            )
        _expect_shape(headers, f"{module}.weight_shape", (2,), model_dir, "original [out, in] shape")
        shape_file = headers[f"{module}.weight_shape"][2]
        out_features, in_features = (int(v) for v in _read_small_tensor(shape_file, f"{module}.weight_shape"))
        _expect_shape(
            headers,
            f"{module}.weight_packed",
            (out_features, -(-in_features // per_word)),
            model_dir,
            f"{found.bits}-bit values of a {out_features}x{in_features} weight",
        )
        groups = 1 if found.group_size in (-1, None) else -(-in_features // found.group_size)
        if found.group_size not in (-1, None) and in_features % found.group_size:
            raise WsdmError(
                f"{model_dir}: {module} has {in_features} inputs, not a multiple of group size {found.group_size}"
            )
        _expect_shape(
            headers, f"{module}.weight_scale", (out_features, groups), model_dir, "one scale per group"
        )
        if not found.symmetric and f"{module}.weight_zero_point" not in headers:
            raise WsdmError(f"{model_dir}: {module}.weight_zero_point is missing (asymmetric scheme)")
    return len(modules)


def gptq_v1_zero(bits: int) -> int:
    """The stored zero point of a symmetric GPTQ v1 checkpoint: 2^(bits-1) - 1 (v2 stores 2^(bits-1))."""
    return (1 << (bits - 1)) - 1


def _check_gptq_tensors(headers: dict, found: QuantizedCheckpoint, model_dir: Path) -> int:
    import numpy as np

    modules = _modules_with(headers, ".qweight")
    if not modules:
        raise WsdmError(f"{model_dir}: config says gptq but no .qweight tensors exist")
    if found.bits not in (2, 3, 4, 8) or (found.bits and 32 % found.bits):
        raise WsdmError(f"{model_dir}: gptq bits {found.bits} is not supported (2, 4 or 8)")
    per_word = 32 // found.bits
    checked_zero = False
    for module in modules:
        dtype, (rows, out_features), _ = headers[f"{module}.qweight"]
        if dtype != "I32":
            raise WsdmError(f"{model_dir}: {module}.qweight is {dtype}, expected int32")
        in_features = rows * per_word
        groups = 1 if found.group_size in (-1, None) else in_features // found.group_size
        _expect_shape(headers, f"{module}.scales", (groups, out_features), model_dir, "one scale per group")
        _expect_shape(
            headers, f"{module}.qzeros", (groups, out_features // per_word), model_dir, "packed zero points"
        )
        if f"{module}.g_idx" in headers:
            _expect_shape(headers, f"{module}.g_idx", (in_features,), model_dir, "group of each input")
        if found.symmetric and not checked_zero:
            zeros = _read_small_tensor(headers[f"{module}.qzeros"][2], f"{module}.qzeros").view(np.uint32)
            mask = (1 << found.bits) - 1
            values = np.unique(np.stack([(zeros >> (found.bits * i)) & mask for i in range(per_word)]))
            if values.tolist() == [gptq_v1_zero(found.bits) + 1]:
                raise WsdmError(
                    f"{model_dir}: {module}.qzeros holds v2 zero points ({values[0]}) under a 'gptq' (v1) "
                    "label; every weight would be off by one step"
                )
            if values.tolist() != [gptq_v1_zero(found.bits)]:
                raise WsdmError(
                    f"{model_dir}: {module}.qzeros holds {values.tolist()[:4]}; a symmetric v1 checkpoint "
                    f"stores {gptq_v1_zero(found.bits)}"
                )
            checked_zero = True
    return len(modules)


def _check_no_full_precision_block_linears(
    headers: dict, found: QuantizedCheckpoint, model_dir: Path
) -> None:
    """Inside the decoder blocks every 2-D weight is a linear layer: none may stay unquantized."""
    ignored = set(found.ignored)
    left = sorted(
        name
        for name, (_, shape, _) in headers.items()
        if ".layers." in name
        and name.endswith(".weight")
        and len(shape) == 2
        and name[: -len(".weight")] not in ignored
    )
    if left:
        raise WsdmError(
            f"{model_dir}: {len(left)} linear weight(s) inside the decoder blocks are not quantized, e.g. {left[0]}"
        )


# --------------------------------------------------------------------------- loading in transformers


def hf_loading_overrides(quantization: dict | None) -> dict:
    """Extra ``from_pretrained`` arguments the transformers engine needs for a quantized checkpoint.

    compressed-tensors checkpoints are decompressed at load: the compressed forward pass of
    transformers' integration does not run on CPU, and the transformers engine is the reference
    and fallback path, not the fast one (that is vLLM, which reads the packed weights directly).
    """
    if not quantization or str(quantization.get("quant_method", "")).lower() != "compressed-tensors":
        return {}
    try:
        import compressed_tensors  # noqa: F401
        from transformers import CompressedTensorsConfig
    except ImportError as exc:
        raise WsdmError(
            "this is a compressed-tensors checkpoint: install the compressed-tensors package "
            "(pip install 'compressed-tensors>=0.17,<0.20') to load it with the transformers engine"
        ) from exc
    # transformers warns whenever a config is passed for a quantized checkpoint; here it is on purpose.
    warnings.filterwarnings("ignore", message="You passed `quantization_config`", category=UserWarning)
    return {"quantization_config": CompressedTensorsConfig(dequantize=True)}
