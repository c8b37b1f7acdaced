"""A model folder and its config.json, read once per run.

Every part of a run asks the config something (the checks its architecture, the engine choice its
quantization, the GPU plan its size): they share one :class:`ModelFolder`, so the file is parsed
once and every reader sees the same dict. Reading it is the one implementation of "parse a model's
config.json" with its one-line errors; the folder checks turn those errors into report lines.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from ..errors import WsdmError


def read_model_config(model_dir: str | Path) -> dict:
    """config.json of a model folder, with one-line errors naming the file for a missing,
    unreadable or malformed one."""
    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    if not path.is_file():
        raise WsdmError(
            f"{model_dir}: no config.json; not a model folder (expected config.json, weights, tokenizer)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise WsdmError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise WsdmError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from exc
    except OSError as exc:
        raise WsdmError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not isinstance(config, dict):
        raise WsdmError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


class ModelFolder:
    """A model folder; ``config`` is parsed on first use and kept (pickles with it, so a worker
    process that gets the folder does not read the file again)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, model: ModelFolder | str | Path) -> ModelFolder:
        """The folder itself, or a new one for a path."""
        return model if isinstance(model, ModelFolder) else cls(model)

    @cached_property
    def config(self) -> dict:
        return read_model_config(self.path)

    @property
    def has_config(self) -> bool:
        return "config" in self.__dict__ or (self.path / "config.json").is_file()

    @property
    def quantization(self) -> dict | None:
        """The checkpoint's ``quantization_config`` (GPTQ, compressed-tensors, FP8, ...), if any."""
        quant = self.config.get("quantization_config")
        return quant if isinstance(quant, dict) else None

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)
