"""Typed trees: plain YAML values turned into dataclasses, and dotted ``--set`` overrides applied.

Generic over the schema (any tree of dataclasses, lists, tuples, mappings, literals and scalars), so
the configuration module holds only the recipe's sections. Every error names the key it is about,
as one line (:class:`WsdmError`); an unsupported declared type is a programming error (TypeError).
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from typing import Any, Literal, Union

from wsdm_serve.errors import WsdmError


def merge_trees(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) replaces the base value."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_trees(merged[key], value)
        else:
            merged[key] = value
    return merged


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        options = [option for option in typing.get_args(tp) if option is not type(None)]
        if len(options) == 1:
            return options[0]
    return tp


def _child_type(tp: Any, key: str) -> Any:
    """The declared type of ``key`` inside a value of type ``tp`` (Any when it cannot be told)."""
    tp = _unwrap_optional(tp)
    if dataclasses.is_dataclass(tp):
        return typing.get_type_hints(tp).get(key, Any)
    origin = typing.get_origin(tp)
    if origin in (list, dict):
        args = typing.get_args(tp)
        return args[-1] if args else Any
    return Any


def _is_free_mapping(tp: Any) -> bool:
    """A ``dict[...]`` field (not a section): ``--set`` may add keys to it."""
    tp = _unwrap_optional(tp)
    return tp is dict or typing.get_origin(tp) is dict


def apply_override(tree: dict[str, Any], item: str, root: type) -> None:
    """Set one ``section.field=value`` (YAML-typed) in ``tree``, whose schema is the dataclass ``root``."""
    import yaml

    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise WsdmError(f"--set {item}: expected section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.split(".")
    node: Any = tree
    tp: Any = root
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, part, item, where)
            tp = _child_type(tp, part)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            free = _is_free_mapping(tp)
            if part not in node and not free:
                known = ", ".join(map(str, node)) or "none"
                raise WsdmError(f"--set {item}: unknown field {where} (known: {known})")
            tp = _child_type(tp, part)
            if last:
                node[part] = _keep_text(node.get(part), value, raw, tp)
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise WsdmError(f"--set {item}: {'.'.join(parts[:depth])} has no fields")


def _keep_text(current: Any, value: Any, raw: str, tp: Any) -> Any:
    """A text field keeps the text as typed: `--set paths.data_dir=2025` is the folder "2025"."""
    text_field = isinstance(current, str) or _unwrap_optional(tp) is str
    if text_field and value is not None and not isinstance(value, str | dict | list):
        return raw.strip()
    return value


def _list_index(node: list, part: str, item: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(node) <= index < len(node):
            raise WsdmError(f"--set {item}: {where}: index out of range (the list has {len(node)} items)")
        return index
    names = [entry.get("name") if isinstance(entry, dict) else None for entry in node]
    if part in names:
        return names.index(part)
    raise WsdmError(
        f"--set {item}: {where}: no item named {part!r} (names: {', '.join(map(str, names)) or 'none'})"
    )


def build(tp: Any, value: Any, where: str) -> Any:
    """Turn a YAML value into ``tp`` (dataclass, list, tuple, optional, scalar), naming the key on error."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return build(option, value, where)
            except WsdmError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise WsdmError(f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise WsdmError(f"{where}: expected a list, got {_describe(value)}")
        (item_type,) = typing.get_args(tp) or (Any,)
        return [build(item_type, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise WsdmError(f"{where}: expected a list, got {_describe(value)}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(build(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise WsdmError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(
            build(t, item, f"{where}[{i}]") for i, (t, item) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise WsdmError(f"{where}: expected a mapping, got {_describe(value)}")
        args = typing.get_args(tp)
        if len(args) == 2:
            return {str(k): build(args[1], v, f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise WsdmError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WsdmError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e4 and 2e-4 (no dot) as strings; they are plain numbers to a user.
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WsdmError(f"{where}: expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise WsdmError(f"{where}: expected text, got {_describe(value)}")
        return str(value)
    raise TypeError(f"{where}: unsupported config type {tp!r}")  # a programming error, not user input


def _build_dataclass(cls: type, value: Any, where: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise WsdmError(f"{where}: expected a mapping of fields, got {_describe(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in value if key not in fields]
    if unknown:
        known = ", ".join(fields) or "none yet"
        raise WsdmError(f"{where}: unknown field {unknown[0]!r} (known: {known})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, spec in fields.items():
        if name in value:
            kwargs[name] = build(hints[name], value[name], f"{where}.{name}" if where != "config" else name)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise WsdmError(f"{where}: missing field {name!r}")
    try:
        return cls(**kwargs)
    except WsdmError as exc:
        # Checks that already name their field keep their own wording.
        message = str(exc)
        if where == "config" or message.startswith(where):
            raise
        raise WsdmError(f"{where}: {message}") from None


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
