"""Stored integers back to weights: weight = scale x (q - zero), exactly, in float32.

Every supported format stores, per linear layer, small integers ``q``, one scale per group of
inputs (or per output channel) and a zero point; they differ only in layout:

* GPTQ: ``qweight`` [in x bits/32, out] packs unsigned ``q`` along the inputs, ``qzeros``
  [groups, out x bits/32] packs zero points along the outputs, ``scales`` [groups, out], and
  ``g_idx`` [in] names the group of every input (act-order checkpoints permute it). v1 files
  (auto-gptq, optimum, the released judge) store zero - 1, v2 files the zero itself.
* compressed-tensors ``pack-quantized``: ``weight_packed`` [out, in x bits/32] holds signed ``q``
  (the library's own packing, unpacked with its own helper), ``weight_scale`` [out, groups],
  optional ``weight_zero_point`` and ``weight_g_idx``.
* compressed-tensors FP8: ``weight`` in float8_e4m3fn and ``weight_scale`` per channel or tensor.

The product of a 16-bit scale and an integer of at most 8 bits fits float32's mantissa, so the
float32 result is exact; casting it to bf16/fp16 then rounds each weight once, as a kernel that
dequantizes in that dtype does.
"""

from __future__ import annotations

from ..errors import WsdmError
from .checkpoint import SourceFormat

GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")
PACKED_PARTS = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx")
FP8_PARTS = ("weight", "weight_scale", "input_scale")


def unpack_int32(packed, bits: int, dim: int):
    """Unsigned ``bits``-wide values packed little-end first into int32 words along ``dim``.

    Value ``i`` of a word sits at bits ``[i * bits, (i + 1) * bits)``: GPTQ's layout for 2, 4 and 8
    bits (3-bit GPTQ straddles words and is not read here).
    """
    import torch

    if packed.dtype != torch.int32:
        raise WsdmError(f"packed weights are {packed.dtype}, expected int32")
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=packed.device)
    words = packed.unsqueeze(dim + 1)  # [..., word, 1, ...]
    view = [1] * words.dim()
    view[dim + 1] = per_word
    values = torch.bitwise_and(torch.bitwise_right_shift(words, shifts.view(view)), (1 << bits) - 1)
    shape = list(packed.shape)
    shape[dim] *= per_word
    return values.reshape(shape)


def _groups_of_inputs(g_idx, in_features: int, group_size: int, n_groups: int, where: str):
    """The group index of every input column (``g_idx`` when stored, else consecutive groups)."""
    import torch

    if g_idx is not None:
        groups = g_idx.to(torch.long)
        if groups.shape != (in_features,):
            raise WsdmError(f"{where}: g_idx has shape {tuple(groups.shape)}, expected ({in_features},)")
        if len(groups) and (int(groups.min()) < 0 or int(groups.max()) >= n_groups):
            raise WsdmError(f"{where}: g_idx names groups outside 0..{n_groups - 1}")
        return groups
    size = in_features if group_size in (-1, None, 0) else group_size
    groups = torch.arange(in_features) // size
    if int(groups[-1]) >= n_groups:
        raise WsdmError(f"{where}: {in_features} inputs need more than the {n_groups} scale group(s) stored")
    return groups


def gptq_weight(parts: dict, source: SourceFormat, where: str):
    """[out, in] float32 weight of one GPTQ layer from its ``qweight``, ``qzeros``, ``scales``, ``g_idx``."""
    import torch

    bits = source.bits
    assert bits is not None
    missing = [name for name in ("qweight", "qzeros", "scales") if name not in parts]
    if missing:
        raise WsdmError(f"{where}: {where}.{missing[0]} is missing")
    q = unpack_int32(parts["qweight"], bits, 0).to(torch.int32)  # [in, out], unsigned
    zeros = unpack_int32(parts["qzeros"], bits, 1).to(torch.int32)  # [groups, out (padded)]
    scales = parts["scales"].to(torch.float32)  # [groups, out]
    in_features, out_features = q.shape
    if scales.shape[1] != out_features or zeros.shape[1] < out_features:
        raise WsdmError(
            f"{where}: scales {tuple(scales.shape)} / qzeros do not fit qweight of {out_features} outputs"
        )
    zeros = zeros[:, :out_features]
    if source.gptq_v1:
        zeros = zeros + 1  # v1 stores zero - 1
    groups = _groups_of_inputs(parts.get("g_idx"), in_features, source.group_size, scales.shape[0], where)
    weight = (q - zeros[groups]).to(torch.float32) * scales[groups]
    return weight.t().contiguous()


def packed_weight(parts: dict, source: SourceFormat, where: str):
    """[out, in] float32 weight of one compressed-tensors pack-quantized layer."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    bits = source.bits
    assert bits is not None
    for name in ("weight_packed", "weight_scale", "weight_shape"):
        if name not in parts:
            raise WsdmError(f"{where}: {where}.{name} is missing")
    out_features, in_features = (int(v) for v in parts["weight_shape"].tolist())
    q = unpack_from_int32(parts["weight_packed"], bits, torch.Size([out_features, in_features]))
    scales = parts["weight_scale"].to(torch.float32)
    if scales.dim() == 1:
        scales = scales.unsqueeze(1)
    if scales.shape[0] != out_features:
        raise WsdmError(f"{where}: weight_scale has shape {tuple(scales.shape)} for {out_features} outputs")
    n_groups = scales.shape[1]
    zero = torch.zeros((out_features, n_groups), dtype=torch.float32)
    if "weight_zero_point" in parts:
        stored = parts["weight_zero_point"]
        if stored.dtype == torch.int32 and stored.shape[0] != out_features:
            stored = unpack_from_int32(stored, bits, torch.Size([out_features, n_groups]), packed_dim=0)
        zero = stored.to(torch.float32).reshape(out_features, n_groups)
    groups = _groups_of_inputs(parts.get("weight_g_idx"), in_features, source.group_size, n_groups, where)
    return (q.to(torch.float32) - zero[:, groups]) * scales[:, groups]


def fp8_weight(parts: dict, where: str):
    """[out, in] float32 weight of one FP8 layer: its E4M3 values times their scale."""
    import torch

    if "weight_scale" not in parts:
        raise WsdmError(f"{where}: {where}.weight_scale is missing")
    weight = parts["weight"].to(torch.float32)
    scale = parts["weight_scale"].to(torch.float32)
    if scale.numel() == 1:
        return weight * scale.reshape(())
    if scale.numel() != weight.shape[0]:
        raise WsdmError(f"{where}: weight_scale has {scale.numel()} values for {weight.shape[0]} outputs")
    return weight * scale.reshape(-1, 1)


def check_gptq_zero_points(tensors, source: SourceFormat, modules: dict) -> None:
    """A symmetric v1 file stores 2^(bits-1) - 1; one storing 2^(bits-1) holds v2 zero points under
    a v1 label (a known GPTQModel export defect), which would shift every weight by one step."""
    from .quantization import gptq_v1_zero

    if source.kind != "gptq" or not source.gptq_v1 or not source.symmetric or not modules:
        return
    first = sorted(modules)[0]
    values = unpack_int32(tensors.get(f"{first}.qzeros"), source.bits, 1).unique().tolist()
    if values == [gptq_v1_zero(source.bits) + 1]:
        raise WsdmError(
            f"{tensors.model_dir}: {first}.qzeros holds v2 zero points ({values[0]}) under a 'gptq' (v1) label; "
            "if the file is v2, set quantization_config.checkpoint_format to gptq_v2 in config.json"
        )


def quantized_modules(names: list[str], source: SourceFormat, dtype_of) -> dict[str, tuple[str, ...]]:
    """Module name -> the stored parts of each quantized layer (``dtype_of(name)`` gives header dtypes)."""
    if source.kind == "gptq":
        marker, parts = ".qweight", GPTQ_PARTS
    elif source.kind == "ct-int":
        marker, parts = ".weight_packed", PACKED_PARTS
    elif source.kind == "ct-fp8":
        modules = [
            name[: -len(".weight")]
            for name in names
            if name.endswith(".weight") and dtype_of(name) in ("F8_E4M3", "F8_E4M3FN")
        ]
        return {module: FP8_PARTS for module in modules}
    else:
        return {}
    return {name[: -len(marker)]: parts for name in names if name.endswith(marker)}


def dequantize_module(module: str, parts: dict, source: SourceFormat):
    """The float32 [out, in] weight of one quantized layer of ``source``."""
    if source.kind == "gptq":
        return gptq_weight(parts, source, module)
    if source.kind == "ct-int":
        return packed_weight(parts, source, module)
    return fp8_weight(parts, module)


def conversion_units(tensors, modules: dict[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """("module", name) for each quantized layer (all its parts at once), ("tensor", name) for the rest."""
    part_of = {
        f"{module}.{part}": module
        for module, parts in modules.items()
        for part in parts
        if f"{module}.{part}" in tensors.headers
    }
    units, seen = [], set()
    for name in tensors.names():
        module = part_of.get(name)
        if module is None:
            units.append(("tensor", name))
        elif module not in seen:
            seen.add(module)
            units.append(("module", module))
    return units


def module_shape(tensors, module: str, source: SourceFormat) -> tuple[int, int]:
    """[out, in] of a quantized layer from its headers (GPTQ: qweight is [in x bits / 32, out])."""
    if source.kind == "gptq":
        rows, out_features = tensors.shape(f"{module}.qweight")
        return out_features, rows * (32 // (source.bits or 32))
    if source.kind == "ct-int":
        shape = tensors.get(f"{module}.weight_shape").tolist()
        return int(shape[0]), int(shape[1])
    out_features, in_features = tensors.shape(f"{module}.weight")
    return out_features, in_features
