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
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wsdm_serve.errors import WsdmError
from wsdm_serve.outputs import atomic_directory

from ..config import MERGE_DTYPES, MERGE_MODES, Config, MergeConfig
from .adapters import (
    ADAPTER_WEIGHTS,
    check_adapter_folder,
    check_compatible,
    combine_adapters,
    read_adapter,
    write_adapter,
)

log = logging.getLogger(__name__)

MERGE_INFO = "merge_info.json"


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
    _check_inputs(config, base, adapters, out, adapter_out, tokenizer_dir)
    info = {
        "mode": config.mode,
        "base": str(base),
        "dtype": config.dtype,
        "adapters": [{"path": str(p), "sha256": _sha256(Path(p) / ADAPTER_WEIGHTS)} for p in adapters],
    }
    if _same_merge(out, info) and not force:
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


def _check_inputs(
    config: MergeConfig,
    base: Path,
    adapters: Sequence[str | Path],
    out: Path,
    adapter_out: Path,
    tokenizer_dir: Path,
) -> None:
    """Settings, adapter folders, and outputs that would overwrite an input: one line each, before loading."""
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


def _same_merge(out: Path, info: dict) -> bool:
    """``out`` holds a merge of the same adapters (by content), base, mode and dtype."""
    previous = out / MERGE_INFO
    if not previous.exists():
        return False
    try:
        return {k: v for k, v in json.loads(previous.read_text()).items() if k in info} == info
    except json.JSONDecodeError:
        return False


__all__ = [
    "MERGE_MODES",
    "MergeConfig",
    "MergeResult",
    "default_adapter_dirs",
    "merge_folds",
    "merge_from_config",
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
