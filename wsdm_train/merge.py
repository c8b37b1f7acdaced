"""`wsdm-train merge`: combine the per-fold LoRA adapters into one model folder.

Each fold's distillation leaves a PEFT adapter that changes a weight W by ΔW_k = s·B_k·A_k, where
s = alpha/r (alpha/sqrt(r) with rsLoRA). Two ways to combine K folds:

``reference``  What the published recipe did: every adapter tensor is averaged element-wise, A and B
               separately, giving s·B̄·Ā. That is not the mean delta: (1/K)·Σ B_k·A_k = B̄·Ā +
               (1/K)·Σ (B_k − B̄)(A_k − Ā), so the fold covariance term is dropped.
``delta``      The exact mean delta (1/K)·Σ ΔW_k, written as ONE adapter of rank K·r: the folds'
               A factors stacked along the rank dimension, their B factors side by side, B scaled so
               the adapter's own scaling times the scale on B equals s/K. Merging it equals the mean
               of the K separately merged fold models up to floating-point rounding.

Either combined adapter is written as a normal PEFT folder (config included: no manual copy step),
then merged into the base weights with PEFT and saved with the tokenizer as a complete model folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wsdm_serve.errors import WsdmError
from wsdm_serve.outputs import atomic_directory

from .config import MERGE_DTYPES, MERGE_MODES, Config, MergeConfig

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGE_INFO = "merge_info.json"

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


@dataclass
class MergeResult:
    out: Path
    adapter_dir: Path
    mode: str
    n_folds: int
    seconds: float
    skipped: bool = False
    info: dict = field(default_factory=dict)

    def summary(self) -> str:
        if self.skipped:
            return f"{self.out}: already merged from the same adapters ({self.mode}); nothing to do"
        return (
            f"{self.out}: {self.n_folds} fold adapter(s) merged ({self.mode} mode) into the base, "
            f"{self.seconds:.1f} s; combined adapter in {self.adapter_dir}"
        )


# --------------------------------------------------------------------------- reading and checking


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


# --------------------------------------------------------------------------- merging into the base


def _resolve_dtype(dtype: str):
    import torch

    if dtype not in MERGE_DTYPES:
        raise WsdmError(f"unknown dtype {dtype!r}; choose one of {', '.join(MERGE_DTYPES)}")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


def load_base_model(base: Path, dtype: str, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    if not (base / "config.json").exists():
        raise WsdmError(f"{base}: base model folder not found or has no config.json")
    try:
        return AutoModelForCausalLM.from_pretrained(
            base, dtype=_resolve_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except WsdmError:
        raise
    except Exception as exc:  # noqa: BLE001 - loader failures become one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WsdmError(f"{base}: cannot load the base model ({reason})") from exc


def apply_adapter(base_model, adapter_dir: Path):
    """Merge a PEFT adapter into ``base_model`` and return the plain model.

    PEFT only warns when adapter tensors match no module (they are skipped, leaving B = 0 and the
    merge a silent no-op), so every saved tensor is checked to have been loaded, value for value.
    """
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Found missing adapter keys")  # checked below
            model = PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=False)
    except Exception as exc:  # noqa: BLE001 - shape or target mismatches
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise WsdmError(f"{adapter_dir}: the adapter does not fit the base model ({reason})") from exc
    loaded = get_peft_model_state_dict(model)
    saved = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    missing = sorted(set(saved) - set(loaded))
    if missing:
        raise WsdmError(f"{adapter_dir}: tensor {missing[0]} matches no module of the base model")
    for name, tensor in saved.items():
        if not torch.equal(loaded[name].to(tensor.dtype).cpu(), tensor):
            raise WsdmError(f"{adapter_dir}: tensor {name} was not loaded into the model as saved")
    try:
        return model.merge_and_unload(safe_merge=True)
    except ValueError as exc:  # safe_merge found NaN/inf
        raise WsdmError(f"{adapter_dir}: merging produced non-finite weights ({exc})") from exc


def save_model_folder(model, tokenizer, dest: Path, max_shard_size: str, extra: dict[str, dict]) -> None:
    """Weights (sharded safetensors), config, tokenizer and provenance files, atomically."""
    with atomic_directory(dest) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        for name, payload in extra.items():
            (tmp / name).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- the stage


def default_adapter_dirs(model_dir: str | Path, n_folds: int, subdir: str = "best") -> list[Path]:
    """Where `wsdm-train distill` leaves each fold's adapter."""
    return [Path(model_dir) / "student" / f"fold{k}" / subdir for k in range(n_folds)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def merge_folds(
    base: str | Path,
    adapters: Sequence[str | Path],
    out: str | Path,
    *,
    config: MergeConfig | None = None,
    adapter_out: str | Path | None = None,
    tokenizer: str | Path | None = None,
    force: bool = False,
    trust_remote_code: bool = False,
) -> MergeResult:
    """Combine the fold adapters, merge them into ``base`` and save a complete model at ``out``.

    The combined adapter goes to ``adapter_out`` (default: ``<out>_adapter`` beside ``out``). If
    ``out`` already holds a merge of the same adapters, base and settings, nothing is redone;
    any other existing ``out`` is replaced only with ``force``.
    """
    config = config or MergeConfig()
    started = time.time()
    base, out = Path(base), Path(out)
    adapter_out = Path(adapter_out) if adapter_out else out.with_name(out.name + "_adapter")
    tokenizer_dir = Path(tokenizer) if tokenizer else base
    if config.mode not in MERGE_MODES:
        raise WsdmError(f"unknown merge mode {config.mode!r}; choose one of {', '.join(MERGE_MODES)}")
    _resolve_dtype(config.dtype)
    if not adapters:
        raise WsdmError("no fold adapters given")
    if out.resolve() == adapter_out.resolve():
        raise WsdmError(f"{out}: the merged model and the combined adapter need different folders")
    inputs = {Path(p).resolve() for p in [base, tokenizer_dir, *adapters]}
    for target in (out, adapter_out):
        if target.resolve() in inputs:
            raise WsdmError(f"{target}: is an input of the merge; write the output elsewhere")
    for path in adapters:
        check_adapter_folder(path)

    info = {
        "mode": config.mode,
        "base": str(base),
        "dtype": config.dtype,
        "adapters": [{"path": str(p), "sha256": _sha256(Path(p) / ADAPTER_WEIGHTS)} for p in adapters],
    }
    previous = out / MERGE_INFO
    if previous.exists():
        try:
            same = {k: v for k, v in json.loads(previous.read_text()).items() if k in info} == info
        except json.JSONDecodeError:
            same = False
        if same and not force:
            return MergeResult(out, adapter_out, config.mode, len(adapters), 0.0, skipped=True, info=info)
    if out.exists() and not force:
        raise WsdmError(
            f"{out}: already exists and is not a merge of these adapters; pass --force to replace it"
        )
    if not tokenizer_dir.exists():
        raise WsdmError(f"{tokenizer_dir}: tokenizer folder not found")

    folds = [read_adapter(p) for p in adapters]
    check_compatible(folds)
    adapter_config, tensors = combine_adapters(folds, config.mode)
    write_adapter(adapter_out, adapter_config, tensors)
    del folds, tensors
    log.info("combined %d adapters (%s) into %s", len(adapters), config.mode, adapter_out)

    from wsdm_serve.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir, trust_remote_code)
    model = apply_adapter(load_base_model(base, config.dtype, trust_remote_code), adapter_out)
    info["rank"] = adapter_config.get("r")
    info["lora_alpha"] = adapter_config.get("lora_alpha")
    save_model_folder(model, tok, out, config.max_shard_size, {MERGE_INFO: info})
    return MergeResult(out, adapter_out, config.mode, len(adapters), time.time() - started, info=info)


__all__ = [
    "MERGE_MODES",
    "MergeConfig",
    "MergeResult",
    "average_adapters",
    "check_compatible",
    "concatenate_adapters",
    "default_adapter_dirs",
    "merge_folds",
    "merge_from_config",
    "read_adapter",
]


def merge_from_config(
    config: Config,
    *,
    adapters: Sequence[str | Path] | None = None,
    folds: int | None = None,
    force: bool = False,
) -> MergeResult:
    """:func:`merge_folds` with what the configuration names: the student's base and tokenizer,
    each fold's ``merge.adapter`` checkpoint under ``paths.model_dir``, ``merge.out``."""
    base = config.model_path(config.student)
    if adapters is None:
        count = folds if folds is not None else config.prepare.n_folds
        adapters = default_adapter_dirs(config.paths.model_dir, count, config.merge.adapter)
    return merge_folds(
        base,
        adapters,
        config.merged_dir(),
        config=config.merge,
        adapter_out=config.merge.adapter_out,
        tokenizer=config.student.tokenizer,
        force=force,
        trust_remote_code=config.student.trust_remote_code,
    )
