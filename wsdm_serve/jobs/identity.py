"""What a work folder's manifest records, so old scores are never mixed with new ones.

Three things decide a score: the input rows, the model and the settings that change what is
computed. Inputs are hashed in full (a local table of 25k rows hashes in about a second). Model
folders hold gigabytes of weights, so the small files (config, tokenizer, chat template) are hashed
in full and each weight file by its size and sampled bytes spread over it: a copied folder is the
same model, a retrained one (same shapes, other values) is not.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from ..errors import WsdmError

SAMPLES_PER_WEIGHT_FILE = 16
SAMPLE_BYTES = 1 << 16
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise WsdmError(f"{path}: cannot read ({exc.strerror})") from exc
    return digest.hexdigest()


def sampled_sha256(path: Path) -> str:
    """Size plus ``SAMPLES_PER_WEIGHT_FILE`` evenly spread 64 KiB windows (first and last included)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        span = max(size - SAMPLE_BYTES, 0)
        for k in range(SAMPLES_PER_WEIGHT_FILE):
            handle.seek(span * k // max(SAMPLES_PER_WEIGHT_FILE - 1, 1))
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def model_identity(model_dir: str | Path) -> str:
    """One hash for a model folder: small files in full, weight files sampled (see module doc)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise WsdmError(f"{model_dir}: model folder not found")
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(model_dir).as_posix()
        if any(part.startswith(".") for part in path.relative_to(model_dir).parts):
            continue  # hidden files (caches, locks) are not the model
        weights = path.suffix in WEIGHT_SUFFIXES
        value = sampled_sha256(path) if weights else file_sha256(path)
        digest.update(f"{relative}\0{value}\n".encode())
    return digest.hexdigest()


def score_settings(settings, chunk_rows: int) -> dict:
    """Every setting that changes a probability, as plain JSON values (``settings`` are the judge's,
    with the engine resolved).

    The engine, its device, its precision and its batching change the last digits (a row's logits
    depend slightly on the rows batched with it, and vLLM's CPU kernels are not its GPU kernels);
    which GPUs or cores, how many engines, how much memory vLLM takes (its KV cache) and its context
    length do not change what a prompt scores, so a resume may change them. The vllm engine's device
    is recorded only on CPUs, so work folders of GPU runs keep the manifest they always had.
    """
    engine = settings.engine
    name = engine.name
    return {
        "tta": settings.tta,
        "time_budget_minutes": settings.time_budget_minutes,
        "truncation": asdict(settings.truncation),
        "text_normalization": settings.text_normalization,
        "engine": name,
        "device": engine.device if name == "hf" or engine.on_cpu else None,
        "dtype": engine.dtype,
        "batch_tokens": engine.batch_tokens if name == "hf" else None,
        "tensor_parallel": engine.tensor_parallel if name == "vllm" else None,
        "enforce_eager": engine.enforce_eager if name == "vllm" else None,
        "load_format": engine.load_format,
        "precision": engine.precision,
        "chunk_rows": chunk_rows,
    }


def describe_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key old -> new`` for every leaf that differs (nested dicts are walked)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += describe_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key} {_short(a)} -> {_short(b)}")
    return changes


def _short(value) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text
