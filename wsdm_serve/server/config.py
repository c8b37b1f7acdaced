"""Settings of the HTTP service: what `wsdm-serve serve` takes besides the engine options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..engines.asynchronous import BatchingOptions
from ..errors import WsdmError
from ..settings import JudgeSettings

API_KEY_ENV = "WSDM_API_KEY"
DEFAULT_MAX_PAIRS_PER_REQUEST = 256
DEFAULT_MAX_QUEUED_PAIRS = 4096
DEFAULT_MAX_BODY_BYTES = 32 * 2**20


@dataclass(frozen=True)
class ServeConfig:
    """The judge's settings (``judge.text_normalization`` is the default of requests that name
    none) and what the service adds: request batching, limits and the API key."""

    judge: JudgeSettings
    batching: BatchingOptions = field(default_factory=BatchingOptions)
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
