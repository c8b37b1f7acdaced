"""How a configuration section is declared: pydantic dataclasses with strict numbers and no unknown keys.

Every section is a standard dataclass (``dataclasses.asdict``/``replace`` work on it) that pydantic
builds and checks: a YAML tree becomes typed sections in one call, and every problem comes back
with the path of the field it is about, which :mod:`wsdm_train.config.loading` turns into one line.
Checks that involve several fields raise :class:`FieldError` naming the field the user should change.
"""

from __future__ import annotations

from typing import Annotated, Any

from annotated_types import Ge, Gt
from pydantic import BeforeValidator, ConfigDict, Strict
from pydantic.dataclasses import dataclass

SECTION_CONFIG = ConfigDict(
    extra="forbid",  # a typo must not silently fall back to a default
    coerce_numbers_to_str=True,  # `data_dir: 2025` is the folder "2025"
    use_attribute_docstrings=True,  # a field's docstring is its description (and its option's help)
)


def section(cls=None, /, **options):
    """``@section`` (or ``@section(frozen=True)``): a keyword-only pydantic dataclass that forbids unknown keys."""

    def wrap(target):
        return dataclass(config=SECTION_CONFIG, kw_only=True, **options)(target)

    return wrap if cls is None else wrap(cls)


def _number(value: Any) -> Any:
    """YAML's ``true`` is not the number 1 here."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


Int = Annotated[int, Strict()]
"""An integer, never a float, a bool or a string."""
Count = Annotated[int, Strict(), Ge(1)]
"""An integer of at least 1."""
NonNegative = Annotated[int, Strict(), Ge(0)]
Float = Annotated[float, BeforeValidator(_number)]
"""A number; text such as ``2e-4`` (which YAML 1.1 reads as a string) counts as one."""
PositiveFloat = Annotated[float, BeforeValidator(_number), Gt(0)]


class FieldError(ValueError):
    """A check that involves several fields, naming the one the message is about (relative to its section)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
