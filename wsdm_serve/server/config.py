"""Settings of the HTTP service: what `wsdm-serve serve` takes besides the engine options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..engines.asynchronous import BatchingOptions
from ..engines.select import EngineOptions
from ..errors import WsdmError
from ..textnorm import Normalization
from ..truncation import INFERENCE_TRUNCATION, TruncationConfig

API_KEY_ENV = "WSDM_API_KEY"
DEFAULT_MAX_PAIRS_PER_REQUEST = 256
DEFAULT_MAX_QUEUED_PAIRS = 4096
DEFAULT_MAX_BODY_BYTES = 32 * 2**20
CONTEXT_SLACK_TOKENS = 64
"""Tokens allowed above token budget + template for the vllm engine's context: decoding a cut text
and encoding it again inside the template can come out a few tokens longer."""


@dataclass(frozen=True)
class ServeConfig:
    model: Path
    engine: EngineOptions = field(default_factory=EngineOptions)
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    truncation: TruncationConfig = INFERENCE_TRUNCATION
    text_normalization: Normalization = "reference"
    trust_remote_code: bool = False
    max_pairs_per_request: int = DEFAULT_MAX_PAIRS_PER_REQUEST
    max_queued_pairs: int = DEFAULT_MAX_QUEUED_PAIRS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.max_pairs_per_request > self.max_queued_pairs:
            raise WsdmError(
                f"--max-pairs-per-request {self.max_pairs_per_request} is more than --max-queued-pairs "
                f"{self.max_queued_pairs}: such a request could never be accepted"
            )


def read_api_key(path: Path | None, environ: dict[str, str]) -> str | None:
    """The key from ``--api-key-file`` (its first line) or else the environment; None: no key."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise WsdmError(f"{path}: cannot read the API key file ({exc.strerror or exc})") from exc
        key = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not key:
            raise WsdmError(f"{path}: the API key file is empty")
        return key
    key = environ.get(API_KEY_ENV, "").strip()
    return key or None
