"""A GPTQ v1 checkpoint like the released model, converted from what llm-compressor writes.

llm-compressor writes compressed-tensors ``pack-quantized`` (vLLM's native format for weight-only
integer models). ``wsdm-train quantize --format gptq`` converts the same integers and scales into a
GPTQ v1 folder, for vLLM's GPTQ kernels on GPUs without Marlin (e.g. the T4).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from wsdm_serve.errors import WsdmError
from wsdm_serve.models.folder import read_model_config

from ..config import QuantizeConfig


def _gptq_module(tensors: dict, module: str, bits: int, group_size: int) -> dict:
    """One compressed-tensors pack-quantized layer as GPTQ v1 tensors (same integers, same scales).

    compressed-tensors packs the offset values q + 2^(bits-1) along the input dimension of an
    [out, in] matrix; GPTQ packs the same unsigned values along the input dimension of [in, out]
    and stores the zero point minus one (v1), i.e. 2^(bits-1) - 1 for a symmetric scheme.
    """
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    from wsdm_serve.models.quantization import gptq_v1_zero

    out_features, in_features = (int(v) for v in tensors[f"{module}.weight_shape"])
    values = unpack_from_int32(
        tensors[f"{module}.weight_packed"], bits, torch.Size([out_features, in_features])
    )  # signed int8 [out, in]
    qweight = pack_to_int32(values.t().contiguous(), bits, packed_dim=0).contiguous()  # [in*bits/32, out]
    groups = in_features // group_size
    zero = torch.full((groups, out_features), gptq_v1_zero(bits) - (1 << (bits - 1)), dtype=torch.int8)
    qzeros = pack_to_int32(zero, bits, packed_dim=1).contiguous()  # [groups, out * bits / 32]
    return {
        f"{module}.qweight": qweight,
        f"{module}.qzeros": qzeros,
        f"{module}.scales": tensors[f"{module}.weight_scale"].t().to(torch.float16).contiguous(),
        f"{module}.g_idx": torch.arange(in_features, dtype=torch.int32) // group_size,
    }


def export_gptq_v1(source: Path, dest: Path, config: QuantizeConfig) -> None:
    """Rewrite a pack-quantized folder ``source`` as a GPTQ v1 folder ``dest`` (an empty folder)."""
    from safetensors.torch import load_file, save_file

    if config.group_size == -1 or not config.symmetric:
        raise WsdmError("--format gptq is written for symmetric group-wise schemes only")
    weight_map: dict[str, str] = {}
    files = sorted(source.glob("*.safetensors"))
    for path in files:
        tensors = load_file(str(path))
        modules = sorted(
            name[: -len(".weight_packed")] for name in tensors if name.endswith(".weight_packed")
        )
        converted = {
            name: tensor
            for name, tensor in tensors.items()
            if not any(name.startswith(module + ".weight_") for module in modules)
        }
        for module in modules:
            converted.update(_gptq_module(tensors, module, config.bits, config.group_size))
        save_file(converted, str(dest / path.name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(converted, path.name))
    if len(files) > 1:
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    for path in source.iterdir():
        if (
            path.is_file()
            and not path.name.endswith(".safetensors")
            and path.name != "model.safetensors.index.json"
        ):
            shutil.copy2(path, dest / path.name)
    model_config = read_model_config(dest)
    model_config["quantization_config"] = {
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "bits": config.bits,
        "group_size": config.group_size,
        "sym": True,
        "desc_act": False,
        "damp_percent": config.dampening,
        "true_sequential": True,
        "static_groups": False,
    }
    (dest / "config.json").write_text(json.dumps(model_config, indent=2, sort_keys=True) + "\n")
