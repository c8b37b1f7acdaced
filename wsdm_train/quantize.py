"""`wsdm-train quantize`: GPTQ 8-bit weights of the merged model, as the reference shipped it.

The reference ran transformers' GPTQConfig (optimum + AutoGPTQ, both retired since) with bits 8,
group size 128, symmetric, no activation order, damping 0.1, calibrated on 1024 student training
prompts of fold 0 sampled with seed 2025 and tokenized whole. The same algorithm runs here through
llm-compressor's ``GPTQModifier`` (a maintained library that installs beside the pinned torch and
transformers), which writes compressed-tensors ``pack-quantized``: vLLM's native format for
weight-only integer models, also read by the transformers engine. ``--format gptq`` converts the
same integers and scales into a GPTQ v1 checkpoint like the released model (for vLLM's GPTQ
kernels on GPUs without Marlin, e.g. the T4). Either way the result is checked on disk with
:func:`wsdm_serve.quantization.verify_quantized_checkpoint` before it is moved into place.

llm-compressor pins compressed-tensors 0.19 while vLLM 0.26 pins 0.17, so quantizing and serving
with vLLM need separate environments (the checkpoint itself loads in both).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from wsdm_serve.data import read_table
from wsdm_serve.engines.model_shape import read_model_config
from wsdm_serve.errors import WsdmError
from wsdm_serve.outputs import atomic_directory
from wsdm_serve.quantization import verify_quantized_checkpoint

from .config import Config, QuantizeConfig

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


# --------------------------------------------------------------------------- GPTQ v1 export


def _gptq_module(tensors: dict, module: str, bits: int, group_size: int) -> dict:
    """One compressed-tensors pack-quantized layer as GPTQ v1 tensors (same integers, same scales).

    compressed-tensors packs the offset values q + 2^(bits-1) along the input dimension of an
    [out, in] matrix; GPTQ packs the same unsigned values along the input dimension of [in, out]
    and stores the zero point minus one (v1), i.e. 2^(bits-1) - 1 for a symmetric scheme.
    """
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    from wsdm_serve.quantization import gptq_v1_zero

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
    info = {"source": _fingerprint(model_dir, calibration), "settings": config.settings()}
    previous = out / QUANTIZE_INFO
    if previous.exists() and not force:
        try:
            old = json.loads(previous.read_text())
        except json.JSONDecodeError:
            old = {}
        if {k: old.get(k) for k in info} == info:
            return QuantizeResult(out, config.format, "", old.get("calibration_rows", 0), 0, skipped=True)
    if out.exists() and not force:
        raise WsdmError(f"{out}: already exists and holds another quantization; pass --force to replace it")

    seconds: dict[str, float] = {}
    started = time.time()
    texts, positions = calibration_prompts(calibration, config.calibration_samples, config.calibration_seed)
    _import_llmcompressor_quietly()
    from llmcompressor import oneshot

    from wsdm_serve.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    dataset, n_tokens = calibration_dataset(tokenizer, texts, config.max_calibration_tokens)
    recipe = gptq_recipe(config)
    seconds["calibration data"] = time.time() - started

    started = time.time()
    loaded = _load_model(model_dir, config.dtype, trust_remote_code)
    seconds["load"] = time.time() - started

    started = time.time()
    try:
        oneshot(
            model=loaded,
            processor=tokenizer,
            dataset=dataset,
            recipe=[recipe],
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
    return QuantizeResult(out, config.format, found.describe(), len(texts), n_tokens, seconds)


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
