"""`wsdm-train quantize`: GPTQ 8-bit weights of the merged model, as the reference shipped it.

The reference ran transformers' GPTQConfig (optimum + AutoGPTQ, both retired since) with bits 8,
group size 128, symmetric, no activation order, damping 0.1, calibrated on 1024 student training
prompts of fold 0 sampled with seed 2025 and tokenized whole. The same algorithm runs here through
llm-compressor's ``GPTQModifier`` (a maintained library that installs beside the pinned torch and
transformers), which writes compressed-tensors ``pack-quantized``: vLLM's native format for
weight-only integer models, also read by the transformers engine. ``--format gptq`` converts the
same integers and scales into a GPTQ v1 checkpoint like the released model (for vLLM's GPTQ
kernels on GPUs without Marlin, e.g. the T4). Either way the result is checked on disk with
:func:`wsdm_serve.models.quantization.verify_quantized_checkpoint` before it is moved into place.

llm-compressor pins compressed-tensors 0.19 while vLLM 0.26 pins 0.17, so quantizing and serving
with vLLM need separate environments (the checkpoint itself loads in both).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from wsdm_serve.data import read_table
from wsdm_serve.errors import WsdmError
from wsdm_serve.models.folder import read_model_config
from wsdm_serve.models.quantization import verify_quantized_checkpoint
from wsdm_serve.outputs import atomic_directory

from ..config import Config, QuantizeConfig
from .gptq import export_gptq_v1

log = logging.getLogger(__name__)

QUANTIZE_INFO = "quantize_info.json"
INSTALL_HINT = (
    "llm-compressor is not installed: pip install 'wsdm[quantize]' (in an environment without "
    "vLLM: they pin different compressed-tensors versions)"
)


@dataclass
class QuantizeResult:
    out: Path
    format: str
    description: str
    calibration_rows: int
    calibration_tokens: int
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: bool = False

    def summary(self) -> str:
        if self.skipped:
            return f"{self.out}: already quantized from the same model, data and settings; nothing to do"
        timing = ", ".join(f"{name} {value:.1f} s" for name, value in self.seconds.items())
        return (
            f"{self.out}: {self.description}; calibrated on {self.calibration_rows} prompts "
            f"({self.calibration_tokens:,} tokens); {timing}"
        )


# --------------------------------------------------------------------------- calibration data


def calibration_prompts(path: str | Path, samples: int, seed: int) -> tuple[list[str], list[int]]:
    """The reference's draw: ``frame.sample(n=samples, random_state=seed)`` of the ``text`` column.

    With fewer rows than ``samples`` every row is used (in the same seeded shuffled order) instead
    of failing as pandas would.
    """
    path = Path(path)
    if not path.exists():
        raise WsdmError(f"{path}: calibration file not found (run `wsdm-train prepare` first)")
    frame = read_table(path)
    if "text" not in frame.columns:
        raise WsdmError(
            f"{path}: no 'text' column (found: {', '.join(map(str, frame.columns)) or 'none'}); "
            "expected the student training prompts of `wsdm-train prepare`"
        )
    if len(frame) == 0:
        raise WsdmError(f"{path}: the table has no rows")
    nulls = frame["text"].isna().to_numpy().nonzero()[0]
    if len(nulls):
        raise WsdmError(f"{path}: row {nulls[0] + 1}: text is null")
    if len(frame) < samples:
        log.warning("%s: %d rows, fewer than %d calibration samples; using all", path, len(frame), samples)
    drawn = frame.sample(n=min(samples, len(frame)), random_state=seed)
    positions = frame.index.get_indexer(drawn.index).tolist()
    return [str(text) for text in drawn["text"]], positions


def calibration_dataset(tokenizer, texts: list[str], max_tokens: int | None):
    """Token ids of whole prompts (or their first ``max_tokens``), as a datasets.Dataset."""
    from datasets import Dataset

    from wsdm_serve.preprocess import tokenize_prompts

    ids = tokenize_prompts(tokenizer, texts)
    if max_tokens is not None:
        ids = [row[:max_tokens] for row in ids]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}), sum(
        map(len, ids)
    )


# --------------------------------------------------------------------------- llm-compressor


def gptq_recipe(config: QuantizeConfig):
    """The reference's GPTQ settings as an explicit llm-compressor scheme (its presets differ)."""
    try:
        from llmcompressor.modifiers.quantization import GPTQModifier
    except ImportError as exc:
        raise WsdmError(INSTALL_HINT) from exc
    weights = {
        "num_bits": config.bits,
        "type": "int",
        "symmetric": config.symmetric,
        "strategy": "group" if config.group_size != -1 else "channel",
    }
    if config.group_size != -1:
        weights["group_size"] = config.group_size
    return GPTQModifier(
        config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
        ignore=list(config.ignore),
        # None switches activation ordering off; the modifier's own default is "static".
        actorder="static" if config.act_order else None,
        dampening_frac=config.dampening,
        block_size=config.block_size,
    )


def _import_llmcompressor_quietly() -> None:
    """Import llm-compressor with its log on stderr, warnings and up, metrics off.

    It points loguru at stdout on import (and logs there while importing), so the import runs
    with its console level raised, then the sinks are replaced. LLM_COMPRESSOR_LOG_LEVEL still
    chooses the level (DEBUG also shows the per-layer metrics).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    level = os.environ.get("LLM_COMPRESSOR_LOG_LEVEL", "WARNING").upper()
    os.environ["LLM_COMPRESSOR_LOG_LEVEL"] = "CRITICAL"
    try:
        import compressed_tensors.logger  # noqa: F401
        import llmcompressor.logger  # noqa: F401
        from llmcompressor import oneshot  # noqa: F401
    except ImportError as exc:
        raise WsdmError(INSTALL_HINT) from exc
    finally:
        os.environ["LLM_COMPRESSOR_LOG_LEVEL"] = level
    from loguru import logger

    logger.remove()
    logger.add(
        sys.stderr,
        level=level,
        format="{level}: {message}",
        filter=lambda record: level == "DEBUG" or record["level"].name != "METRIC",
    )


def _load_model(model_dir: Path, dtype: str, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype="auto" if dtype == "auto" else getattr(torch, dtype),
            trust_remote_code=trust_remote_code,
        )
    except Exception as exc:  # noqa: BLE001 - loader failures become one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WsdmError(f"{model_dir}: cannot load the model ({reason})") from exc


# --------------------------------------------------------------------------- the stage


def _fingerprint(model_dir: Path, calibration: Path) -> dict:
    """What a finished output was made from: a re-run with the same inputs has nothing to do."""
    digest = hashlib.sha256()
    with calibration.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    weights = sorted(model_dir.glob("*.safetensors"))
    return {
        "model": str(model_dir),
        "model_weights": {p.name: p.stat().st_size for p in weights},
        "model_merge_info": (model_dir / "merge_info.json").read_text()
        if (model_dir / "merge_info.json").exists()
        else None,
        "calibration": str(calibration),
        "calibration_sha256": digest.hexdigest(),
    }


def quantize_model(
    model: str | Path,
    out: str | Path,
    *,
    calibration: str | Path,
    config: QuantizeConfig | None = None,
    force: bool = False,
    trust_remote_code: bool = False,
) -> QuantizeResult:
    """GPTQ-quantize the model folder ``model`` into ``out`` (weights, config, tokenizer).

    ``calibration`` is a table with a ``text`` column (fold 0's student training prompts in the
    reference). The output is verified on disk before it replaces ``out``; if ``out`` already holds
    a quantization of the same model and data with the same settings, nothing is redone.
    """
    config = config or QuantizeConfig()
    model_dir, out, calibration = Path(model), Path(out), Path(calibration)
    _check_inputs(model_dir, out, calibration)
    info = {"source": _fingerprint(model_dir, calibration), "settings": config.settings()}
    previous = _previous(out, info, force)
    if previous is not None:
        return QuantizeResult(out, config.format, "", previous.get("calibration_rows", 0), 0, skipped=True)

    seconds: dict[str, float] = {}
    started = time.time()
    texts, positions = calibration_prompts(calibration, config.calibration_samples, config.calibration_seed)
    _import_llmcompressor_quietly()
    from wsdm_serve.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    dataset, n_tokens = calibration_dataset(tokenizer, texts, config.max_calibration_tokens)
    seconds["calibration data"] = time.time() - started

    started = time.time()
    loaded = _load_model(model_dir, config.dtype, trust_remote_code)
    seconds["load"] = time.time() - started
    started = time.time()
    _calibrate(loaded, tokenizer, dataset, config, model_dir)
    seconds["gptq"] = time.time() - started

    started = time.time()
    info.update(
        calibration_rows=len(texts),
        calibration_tokens=n_tokens,
        calibration_positions=positions,
        library={
            "llmcompressor": _version("llmcompressor"),
            "compressed-tensors": _version("compressed-tensors"),
        },
    )
    found = _save(loaded, tokenizer, out, config, info, seconds, started)
    return QuantizeResult(out, config.format, found, len(texts), n_tokens, seconds)


def _check_inputs(model_dir: Path, out: Path, calibration: Path) -> None:
    if out.resolve() in (model_dir.resolve(), calibration.resolve().parent):
        raise WsdmError(f"{out}: is an input of the quantization; write the output elsewhere")
    if not (model_dir / "config.json").exists():
        raise WsdmError(f"{model_dir}: model folder not found or has no config.json (run `wsdm-train merge`)")
    if read_model_config(model_dir).get("quantization_config"):
        raise WsdmError(
            f"{model_dir}: the model is already quantized; quantize the merged full-precision model"
        )
    if not calibration.exists():
        raise WsdmError(f"{calibration}: calibration file not found (run `wsdm-train prepare` first)")


def _previous(out: Path, info: dict, force: bool) -> dict | None:
    """The record of ``out`` when it is already this quantization; an other one needs ``force``."""
    previous = out / QUANTIZE_INFO
    if previous.exists() and not force:
        try:
            old = json.loads(previous.read_text())
        except json.JSONDecodeError:
            old = {}
        if {k: old.get(k) for k in info} == info:
            return old
    if out.exists() and not force:
        raise WsdmError(f"{out}: already exists and holds another quantization; pass --force to replace it")
    return None


def _calibrate(loaded, tokenizer, dataset, config: QuantizeConfig, model_dir: Path) -> None:
    """llm-compressor's one-shot GPTQ over the calibration prompts, in order, layer by layer."""
    from llmcompressor import oneshot

    try:
        oneshot(
            model=loaded,
            processor=tokenizer,
            dataset=dataset,
            recipe=[gptq_recipe(config)],
            num_calibration_samples=len(dataset),
            shuffle_calibration_samples=False,
            max_seq_length=None,
            pipeline="sequential",
        )
    except WsdmError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed calibration is one line, details in the log
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WsdmError(f"{model_dir}: GPTQ calibration failed ({type(exc).__name__}: {reason})") from exc


def _save(
    loaded, tokenizer, out: Path, config: QuantizeConfig, info: dict, seconds: dict, started: float
) -> str:
    """Write the checkpoint in its format, verify it on disk, then move it into place; its description."""
    with atomic_directory(out) as tmp:
        if config.format == "compressed-tensors":
            loaded.save_pretrained(tmp, save_compressed=True, max_shard_size=config.max_shard_size)
            tokenizer.save_pretrained(tmp)
        else:
            # The library writes compressed-tensors; the GPTQ folder is converted from it.
            with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".ct", dir=out.parent) as staging:
                loaded.save_pretrained(staging, save_compressed=True, max_shard_size=config.max_shard_size)
                tokenizer.save_pretrained(staging)
                export_gptq_v1(Path(staging), tmp, config)
        found = verify_quantized_checkpoint(tmp, config.spec)
        info["checkpoint"] = found.describe()
        seconds["save"] = time.time() - started
        info["seconds"] = seconds
        (tmp / QUANTIZE_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return found.describe()


def quantize_from_config(config: Config, *, force: bool = False) -> QuantizeResult:
    """:func:`quantize_model` with what the configuration names: ``quantize.model`` (default: the
    merge output), ``quantize.calibration`` (default: fold 0's student training prompts) and
    ``quantize.out`` (default: ``paths.model_dir/final_model``)."""
    return quantize_model(
        config.quantize_input(),
        config.final_dir(),
        calibration=config.calibration_file(),
        config=config.quantize,
        force=force,
        trust_remote_code=config.student.trust_remote_code,
    )


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
