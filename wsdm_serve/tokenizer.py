"""Loading the model's tokenizer with one-line errors."""

from __future__ import annotations

from pathlib import Path

from .errors import WsdmError


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    """The tokenizer saved with the model; its chat template defines the prompt's framing."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise WsdmError(
            f"{model_dir}: model folder not found (run `wsdm-serve download-final-model` or pass --model DIR)"
        )
    try:
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for broken folders
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WsdmError(f"{model_dir}: cannot load the tokenizer ({reason})") from exc
