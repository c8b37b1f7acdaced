"""The judge's settings: one object from the command line (or ``Judge.from_pretrained``) to the engines.

:class:`JudgeSettings` holds everything that decides a score (the model folder, the engine and its
precision, truncation, text normalisation, swap TTA); predict, evaluate, render, serve, the work
folders, ``--ray``, rank and rewards all receive it whole. :func:`settings_from_options` is the one
place where flat options (keyword arguments of ``Judge.from_pretrained``) become that object, each
checked by name and type, so a misspelt or ill-typed setting is one error naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .engines.settings import DTYPES, ENGINES, EngineSettings
from .errors import WsdmError
from .textnorm import NORMALIZATIONS, Normalization
from .truncation import INFERENCE_TRUNCATION, TruncationConfig
from .tta import TTA_MODES, TTAMode


class SettingsError(WsdmError, ValueError):
    """An unknown setting or a value of the wrong type or range (a ``ValueError`` for Python callers)."""


@dataclass(frozen=True)
class JudgeSettings:
    """What a judge scores with. ``engine`` is ``auto`` until the judge resolves it (once, at start)."""

    model: Path
    engine: EngineSettings = field(default_factory=EngineSettings)
    truncation: TruncationConfig = INFERENCE_TRUNCATION
    text_normalization: Normalization = "reference"
    tta: TTAMode = "budget"
    time_budget_minutes: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))

    @property
    def trust_remote_code(self) -> bool:
        return self.engine.trust_remote_code

    @property
    def precision(self) -> str:
        return self.engine.precision

    def with_engine(self, engine: EngineSettings) -> JudgeSettings:
        return replace(self, engine=engine)


# ----------------------------------------------------------------------------- flat options
def _choice(choices: Sequence[str]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return check


def _int(minimum: int, optional: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer{' or None' if optional else ''}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return check


def _number(low: float, high: float | None = None, low_open: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number or None")
        if value < low or (low_open and value == low) or (high is not None and value > high):
            where = (
                f"{'(' if low_open else '['}{low:g}, {high:g}]"
                if high is not None
                else f"{'>' if low_open else '>='} {low:g}"
            )
            raise ValueError(f"must be in {where}")
        return float(value)

    return check


def _flag(optional: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if not isinstance(value, bool):
            raise ValueError(f"must be True or False{' or None' if optional else ''}")
        return value

    return check


def _text(optional: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise ValueError(f"must be a string{' or None' if optional else ''}")
        return value

    return check


def _gpus(value: Any) -> str | None:
    """``"0,1"`` as the command line takes it, or a sequence of GPU numbers."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return ",".join(map(str, value))
    raise ValueError('must be a string such as "0,1" or a list of GPU numbers')


def _cpus(value: Any) -> str | None:
    """``"0-3,8"`` as the command line takes it, or a sequence of core numbers."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return ",".join(map(str, value))
    raise ValueError('must be a string such as "0-3,8" or a list of core numbers')


ENGINE_OPTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "engine": ("name", _choice(ENGINES)),
    "device": ("device", _text()),
    "dtype": ("dtype", _choice(DTYPES)),
    "batch_tokens": ("batch_tokens", _int(1, optional=True)),
    "gpus": ("gpus", _gpus),
    "cpus": ("cpus", _cpus),
    "engines": ("engines", _int(1, optional=True)),
    "tensor_parallel": ("tensor_parallel", _int(1, optional=True)),
    "max_model_len": ("max_model_len", _int(2, optional=True)),
    "gpu_memory_utilization": ("gpu_memory_utilization", _number(0, 1, low_open=True)),
    "enforce_eager": ("enforce_eager", _flag(optional=True)),
    "max_num_batched_tokens": ("max_num_batched_tokens", _int(1024, optional=True)),
    "kv_cache_gib": ("kv_cache_gib", _number(0, low_open=True)),
    "precision": ("precision", _choice(("checkpoint", "fp8"))),
    "load_format": ("load_format", _text()),
    "trust_remote_code": ("trust_remote_code", _flag()),
}
"""Flat option name -> (field of :class:`EngineSettings`, check)."""

TRUNCATION_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "token_budget": _int(1),
    "response_word_cap": _int(0),
}

JUDGE_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "text_normalization": _choice(NORMALIZATIONS),
    "tta": _choice(TTA_MODES),
    "time_budget_minutes": _number(0),
    "progress": _flag(),
}

OPTION_NAMES = (*ENGINE_OPTIONS, *TRUNCATION_OPTIONS, *JUDGE_OPTIONS)


def _checked(name: str, check: Callable[[Any], Any], value: Any) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise SettingsError(f"setting {name}={value!r}: {exc}") from None


def settings_from_options(model: str | Path, **options: Any) -> JudgeSettings:
    """:class:`JudgeSettings` from flat options named as `wsdm-serve predict` names them
    (``engine``, ``device``, ``token_budget``, ``tta``, ...); anything unknown or ill-typed is a
    :class:`SettingsError` naming it."""
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise SettingsError(
            f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"known: {', '.join(OPTION_NAMES)}"
        )
    if not isinstance(model, str | Path):
        raise SettingsError(f"model={model!r}: must be a model folder (a path)")
    engine = {
        target: _checked(name, check, options[name])
        for name, (target, check) in ENGINE_OPTIONS.items()
        if name in options
    }
    truncation = {
        name: _checked(name, check, options[name])
        for name, check in TRUNCATION_OPTIONS.items()
        if name in options
    }
    judge = {
        name: _checked(name, check, options[name]) for name, check in JUDGE_OPTIONS.items() if name in options
    }
    return JudgeSettings(
        model=Path(model),
        engine=EngineSettings(**engine),
        truncation=replace(INFERENCE_TRUNCATION, **truncation),
        **judge,
    )
