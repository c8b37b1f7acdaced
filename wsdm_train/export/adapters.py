"""PEFT LoRA adapter folders: read and checked, and the folds combined into one adapter.

The two ways of combining K fold adapters (``reference``: element-wise mean of A and B;
``delta``: the exact mean delta as one adapter of rank K·r) are described in
:mod:`wsdm_train.export.merge`, which merges the result into the base weights. Everything here works on
adapter tensors alone, with no base model loaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wsdm_serve.errors import WsdmError
from wsdm_serve.outputs import atomic_directory

from ..config import MERGE_MODES

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# adapter_config.json fields that change what the adapter's tensors mean: folds that differ in any
# of them cannot be averaged. (Dropout, revision and inference flags do not matter after training.)
STRUCTURAL_FIELDS: tuple[str, ...] = (
    "peft_type",
    "base_model_name_or_path",
    "target_modules",
    "exclude_modules",
    "target_parameters",
    "r",
    "lora_alpha",
    "use_rslora",
    "use_dora",
    "rank_pattern",
    "alpha_pattern",
    "modules_to_save",
    "fan_in_fan_out",
    "bias",
    "lora_bias",
    "layers_to_transform",
    "layers_pattern",
)

# Rank-indexed LoRA factors: (marker in the tensor name, dimension that indexes the rank).
DOWN_FACTORS = ((".lora_A.", 0), (".lora_embedding_A", 0))  # [r, in]
UP_FACTORS = ((".lora_B.", 1), (".lora_embedding_B", 1))  # [out, r]


@dataclass
class FoldAdapter:
    """One fold's adapter as read from disk."""

    path: Path
    config: dict
    tensors: dict  # name -> torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.config.get("r", 0))


def check_adapter_folder(path: str | Path) -> Path:
    """Fail fast, before any model is loaded, on a missing fold or an incomplete adapter folder."""
    path = Path(path)
    if not path.is_dir():
        raise WsdmError(f"{path}: adapter folder not found (run `wsdm-train distill` first)")
    if not (path / ADAPTER_CONFIG).exists():
        raise WsdmError(f"{path}: no {ADAPTER_CONFIG}; not a PEFT adapter folder")
    if not (path / ADAPTER_WEIGHTS).exists():
        found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        raise WsdmError(f"{path}: no {ADAPTER_WEIGHTS} (found: {found})")
    return path


def read_adapter(path: str | Path) -> FoldAdapter:
    """Load a PEFT LoRA folder (config + safetensors); problems become one-line errors."""
    path = check_adapter_folder(path)
    config_path = path / ADAPTER_CONFIG
    weights_path = path / ADAPTER_WEIGHTS
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise WsdmError(f"{config_path}: not valid JSON ({exc.msg})") from exc
    if not isinstance(config, dict):
        raise WsdmError(f"{config_path}: expected a JSON object")
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise WsdmError(f"{config_path}: peft_type is {config.get('peft_type')!r}; only LoRA adapters merge")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise WsdmError(f"{weights_path}: cannot read the weights ({exc})") from exc
    if not any(".lora_" in name for name in tensors):
        raise WsdmError(f"{weights_path}: holds no LoRA tensors")
    return FoldAdapter(path, config, tensors)


def _normalised(value):
    """Target-module lists are sets: their order in the JSON does not matter."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sorted(value)
    return value


def check_compatible(folds: Sequence[FoldAdapter]) -> None:
    """All folds must adapt the same base the same way, or averaging them means nothing."""
    if not folds:
        raise WsdmError("no fold adapters given")
    paths = [fold.path.resolve() for fold in folds]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            raise WsdmError(f"{folds[i].path}: the same adapter is given twice")
    first = folds[0]
    for fold in folds[1:]:
        for key in STRUCTURAL_FIELDS:
            mine, theirs = _normalised(fold.config.get(key)), _normalised(first.config.get(key))
            if mine != theirs:
                raise WsdmError(
                    f"{fold.path}: {key} is {fold.config.get(key)!r} but {first.path} has "
                    f"{first.config.get(key)!r}; all folds must share base model, targets, r and alpha"
                )
        names, first_names = set(fold.tensors), set(first.tensors)
        if names != first_names:
            extra = sorted(names - first_names)
            missing = sorted(first_names - names)
            detail = f"has {extra[0]} that" if extra else f"lacks {missing[0]} that"
            raise WsdmError(f"{fold.path}: {detail} {first.path} {'lacks' if extra else 'has'}")
        for name, tensor in fold.tensors.items():
            other = first.tensors[name]
            if tensor.shape != other.shape or tensor.dtype != other.dtype:
                raise WsdmError(
                    f"{fold.path}: tensor {name} is {tuple(tensor.shape)} {tensor.dtype} but "
                    f"{tuple(other.shape)} {other.dtype} in {first.path}"
                )


# --------------------------------------------------------------------------- combining


def average_adapters(folds: Sequence[FoldAdapter]) -> tuple[dict, dict]:
    """Reference mode: element-wise mean of every tensor, in float32, cast back to its dtype."""
    import torch

    tensors = {}
    for name, tensor in folds[0].tensors.items():
        stacked = torch.stack([fold.tensors[name].float() for fold in folds])
        tensors[name] = stacked.mean(dim=0).to(tensor.dtype).contiguous()
    return dict(folds[0].config), tensors


def lora_scaling(alpha: float, rank: int, rslora: bool) -> float:
    """PEFT's scaling of B·A (alpha/r, or alpha/sqrt(r) with rsLoRA)."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def _factor_kind(name: str) -> tuple[str, int] | None:
    for marker, dim in DOWN_FACTORS:
        if marker in name:
            return "down", dim
    for marker, dim in UP_FACTORS:
        if marker in name:
            return "up", dim
    return None


def concatenate_adapters(folds: Sequence[FoldAdapter]) -> tuple[dict, dict]:
    """Delta mode: one rank-K·r adapter whose delta is exactly the mean of the folds' deltas.

    With r' = K·r and alpha' = K·alpha (also in rank_pattern/alpha_pattern), PEFT scales B'·A' by
    s' = s (plain LoRA) or s' = sqrt(K)·s (rsLoRA). B' = c·[B_1 … B_K] with c = s/(K·s'), so
    s'·B'·A' = (s/K)·Σ B_k·A_k. Tensors that are not rank factors (modules_to_save copies) are
    averaged: the merged model's weight is then the mean weight, as for the factors.
    """
    import torch

    config = dict(folds[0].config)
    if config.get("use_dora"):
        raise WsdmError(
            f"{folds[0].path}: DoRA adapters are not linear in their factors; delta mode cannot "
            "average them exactly (use --mode reference)"
        )
    if config.get("lora_bias"):
        raise WsdmError(f"{folds[0].path}: lora_bias adapters are not supported by delta mode")
    k = len(folds)
    rslora = bool(config.get("use_rslora"))
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    new_rank, new_alpha = k * rank, k * alpha
    # The ratio of old to new scaling is the same for every module whatever its pattern entry, since
    # rank and alpha are both multiplied by K: plain LoRA 1, rsLoRA 1/sqrt(K).
    up_scale = lora_scaling(alpha, rank, rslora) / (k * lora_scaling(new_alpha, new_rank, rslora))
    config["r"] = new_rank
    config["lora_alpha"] = int(new_alpha) if float(new_alpha).is_integer() else new_alpha
    config["rank_pattern"] = {key: k * v for key, v in (config.get("rank_pattern") or {}).items()}
    config["alpha_pattern"] = {key: k * v for key, v in (config.get("alpha_pattern") or {}).items()}

    tensors = {}
    for name in folds[0].tensors:
        kind = _factor_kind(name)
        parts = [fold.tensors[name].float() for fold in folds]
        if kind is None:
            if name.endswith(".bias") and ".lora_" in name:
                raise WsdmError(f"{folds[0].path}: {name}: LoRA bias tensors are not supported by delta mode")
            tensors[name] = torch.stack(parts).mean(dim=0).contiguous()
        elif kind[0] == "down":
            tensors[name] = torch.cat(parts, dim=kind[1]).contiguous()
        else:
            tensors[name] = (torch.cat(parts, dim=kind[1]) * up_scale).contiguous()
    # Stored in float32: the 1/K scale and the sum over folds are not exact in 16-bit.
    return config, tensors


def combine_adapters(folds: Sequence[FoldAdapter], mode: str) -> tuple[dict, dict]:
    if mode == "reference":
        return average_adapters(folds)
    if mode == "delta":
        return concatenate_adapters(folds)
    raise WsdmError(f"unknown merge mode {mode!r}; choose one of {', '.join(MERGE_MODES)}")


def write_adapter(dest: str | Path, config: dict, tensors: dict) -> Path:
    """Save a PEFT adapter folder (config + safetensors) atomically."""
    from safetensors.torch import save_file

    with atomic_directory(dest) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return Path(dest)
