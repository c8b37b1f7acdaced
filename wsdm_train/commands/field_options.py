"""Command options that each set one configuration field, made from the field itself.

`wsdm-train merge --out DIR` sets ``merge.out``: the option's type, choices, bounds and help are
read from the pydantic field (its annotation, its ``Ge`` bound, its docstring), so they cannot
drift from the configuration, and its value goes through the same checks as a YAML value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def field_info(key: str):
    """The pydantic field behind ``section.field`` (its annotation, bounds and description)."""
    from ..config import Config
    from ..config.loading import declared_type

    *parents, name = key.split(".")
    section = Config
    for part in parents:
        section = declared_type(section, part)
    for owner in section.__mro__:  # a field redeclared by a subclass keeps its parent's description
        info = getattr(owner, "__pydantic_fields__", {}).get(name)
        if info is not None and info.description:
            return info
    return section.__pydantic_fields__[name]


def _field_option(spec: str, key: str) -> tuple[click.Option, Callable[[Any], Any]]:
    """``--out DIR`` for ``merge.out``: the click type, choices, bounds and help come from the field."""
    import typing

    from annotated_types import Ge

    option, _, metavar = spec.partition(" ")
    info = field_info(key)
    annotation, bounds = info.annotation, list(info.metadata)
    options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if type(None) in typing.get_args(annotation) and len(options) == 1:
        annotation = options[0]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        bounds += extra
    minimum = next((bound.ge for bound in bounds if isinstance(bound, Ge)), None)
    convert: Callable[[Any], Any] = lambda value: value  # noqa: E731
    kwargs: dict[str, Any] = {"default": None, "metavar": metavar or None}
    if typing.get_origin(annotation) is typing.Literal:
        choices = {str(choice): choice for choice in typing.get_args(annotation)}
        kwargs["type"], convert = click.Choice(list(choices)), choices.__getitem__
    elif annotation is bool:
        option = f"{option}/--no-{option[2:]}"
    elif annotation is int:
        kwargs["type"] = click.IntRange(min=minimum) if minimum is not None else click.INT
    elif annotation is float:
        kwargs["type"] = click.FLOAT
    elif metavar in ("DIR", "FILE"):
        kwargs["type"], convert = click.Path(), str
    description = " ".join((info.description or "").split())
    dest = "field_" + key.replace(".", "__")
    made = click.Option([option, dest], help=f"{description} Sets {key}.".strip(), **kwargs)
    return made, convert


class FieldOptionsCommand(click.Command):
    """A command with options that each set one configuration field (``fields``: option -> field).

    The options are made from the fields on first use, so `wsdm-train --help` does not import the
    configuration (pydantic). Their values reach the command as ``field_overrides``: overrides
    applied after ``--set``, whose problems are reported against the option as the user typed it.
    """

    def __init__(self, *args, fields: dict[str, str], **kwargs) -> None:
        self._fields = fields
        self._made: list[tuple[click.Option, str, Callable[[Any], Any]]] | None = None
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if self._made is None:
            self._made = []
            for spec, key in self._fields.items():
                option, convert = _field_option(spec, key)
                self._made.append((option, key, convert))
            first = [p for p in self._params if p.name in ("config_name", "overrides")]
            rest = [p for p in self._params if p not in first]
            self._params = [*first, *(option for option, _, _ in self._made), *rest]
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = value

    def invoke(self, ctx: click.Context):
        from ..config import Override

        self.params  # noqa: B018 - the options exist once the command runs
        overrides = []
        for option, key, convert in self._made or []:
            value = ctx.params.pop(option.name, None)
            if value is None:
                continue
            if option.is_flag:
                label = option.opts[0] if value else option.secondary_opts[0]
            else:
                label = f"{option.opts[0]} {value}"
            overrides.append(Override(label, key, convert(value)))
        ctx.params["field_overrides"] = overrides
        return super().invoke(ctx)
