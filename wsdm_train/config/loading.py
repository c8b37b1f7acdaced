"""Loading a configuration: a preset or YAML file (with ``base:``), then overrides, typed by pydantic.

A preset or a user file is plain YAML; a user file may start from a preset with ``base: reference``
and change only what differs (mappings merge key by key, lists are replaced whole). Overrides come
from ``--set section.field=value`` (the value is YAML) or from a command's own options; list items
are addressed by index or, for teachers, by name (``--set teachers.athene.model=/models/athene``),
and free mappings take new keys (``--set distill.teacher_predictions.athene=p/fold{fold}.parquet``).

Pydantic builds and checks the sections; its first complaint becomes one line that names the field
path and where the bad value came from: ``config my.yaml: lora.r: expected an integer, got 'x'`` or
``--set prepare.n_folds=abc: prepare.n_folds: expected an integer, got 'abc'``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from wsdm_serve.errors import WsdmError

from .recipe import CONFIG_ADAPTER, Config
from .types import FieldError

PRESETS: tuple[str, ...] = ("reference", "tiny", "small")
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Override:
    """One field set for one run: ``label`` is how the user wrote it (for errors), ``key`` its dotted path."""

    label: str
    key: str
    value: Any
    text: str | None = None  # the value as typed, kept for text fields (`--set paths.data_dir=2025`)


def parse_set(item: str) -> Override:
    """``section.field=value`` with a YAML value (``null``, numbers, lists, mappings)."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise WsdmError(f"--set {item}: expected section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return Override(f"--set {item}", key.strip(), value, raw.strip())


def load_config(name_or_path: str | Path, overrides: Iterable[str | Override] = ()) -> Config:
    """A preset name (``reference``, ``tiny``, ``small``) or a YAML file, then the overrides in order."""
    source = str(name_or_path)
    tree = _load_tree(source, chain=())
    config = _validate(tree, f"config {source}", [])
    items = [parse_set(item) if isinstance(item, str) else item for item in overrides]
    if not items:
        return config
    tree = config.to_dict()
    applied = [(item, apply_override(tree, item)) for item in items]
    return _validate(tree, f"config {source}", applied)


# --------------------------------------------------------------------------- YAML files and presets


def merge_trees(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) replaces the base value."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_trees(merged[key], value)
        else:
            merged[key] = value
    return merged


def _load_tree(name_or_path: str, chain: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    if name_or_path in chain:
        raise WsdmError(f"config {name_or_path}: `base` refers back to itself ({' -> '.join(chain)})")
    path = Path(name_or_path)
    if name_or_path in PRESETS:
        text = resources.files("wsdm_train.presets").joinpath(f"{name_or_path}.yaml").read_text("utf-8")
    elif path.is_file():
        text = path.read_text("utf-8")
    else:
        raise WsdmError(f"config {name_or_path}: no such preset or file (presets: {', '.join(PRESETS)})")
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()
        raise WsdmError(f"config {name_or_path}: not valid YAML ({' '.join(first[:2])})") from exc
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise WsdmError(f"config {name_or_path}: expected a mapping of sections at the top level")
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise WsdmError(f"config {name_or_path}: `base` must be a preset name or a file path")
    if base not in PRESETS and not Path(base).is_absolute() and path.is_file():
        candidate = path.parent / base
        base = str(candidate) if candidate.is_file() else base
    return merge_trees(_load_tree(base, (*chain, name_or_path)), tree)


# --------------------------------------------------------------------------- overrides


def declared_type(tp: Any, part: str | int) -> Any:
    """The declared type of ``part`` inside a value of type ``tp`` (``Any`` when it cannot be told)."""
    tp = _optional_of(tp)
    if dataclasses.is_dataclass(tp):
        info = tp.__pydantic_fields__.get(part) if isinstance(part, str) else None
        return info.annotation if info is not None else Any
    origin = typing.get_origin(tp)
    if origin in (list, dict, tuple):
        args = [arg for arg in typing.get_args(tp) if arg is not Ellipsis]
        return args[-1] if args else Any
    return Any


def _optional_of(tp: Any) -> Any:
    options = [option for option in typing.get_args(tp) if option is not type(None)]
    return options[0] if type(None) in typing.get_args(tp) and len(options) == 1 else tp


def apply_override(tree: dict[str, Any], item: Override) -> Loc:
    """Set ``item`` in the plain tree of a whole configuration; returns where it landed (list indices
    resolved), so that a problem pydantic finds there is reported against the override."""
    parts = item.key.split(".")
    node: Any = tree
    tp: Any = Config
    landed: list[str | int] = []
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        key: str | int
        if isinstance(node, list):
            key = _list_index(node, part, item, ".".join(parts[: depth + 1]))
        elif isinstance(node, dict):
            key = part
            if not last and node.get(part) is None:
                node[part] = {}
        else:
            raise WsdmError(f"{item.label}: {'.'.join(parts[:depth])} has no fields")
        tp = declared_type(tp, key)
        landed.append(key)
        if last:
            node[key] = _as_typed(item, tp)
        else:
            node = node[key]
    return tuple(landed)


def _as_typed(item: Override, tp: Any) -> Any:
    """A text field keeps the text as typed: `--set paths.data_dir=2025.10` is the folder "2025.10"."""
    value = item.value
    if item.text is not None and _optional_of(tp) is str and isinstance(value, int | float):
        return item.text
    return value


def _list_index(node: list, part: str, item: Override, where: str) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(node) <= index < len(node):
            raise WsdmError(f"{item.label}: {where}: index out of range (the list has {len(node)} items)")
        return index % len(node)
    names = [entry.get("name") if isinstance(entry, dict) else None for entry in node]
    if part in names:
        return names.index(part)
    known = ", ".join(map(str, names)) or "none"
    raise WsdmError(f"{item.label}: {where}: no item named {part!r} (names: {known})")


# --------------------------------------------------------------------------- one-line errors


def _validate(tree: dict[str, Any], source: str, applied: list[tuple[Override, Loc]]) -> Config:
    try:
        return CONFIG_ADAPTER.validate_python(tree)
    except ValidationError as exc:
        raise WsdmError(describe(exc, tree, source, applied)) from None


def describe(
    exc: ValidationError, tree: dict[str, Any], source: str, applied: list[tuple[Override, Loc]] = ()
) -> str:
    """pydantic's first complaint as one line: where the value came from, the field path, the problem."""
    errors = exc.errors()
    error = errors[0]
    loc: Loc = tuple(error["loc"])
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    origin = next(
        (item for item, landed in reversed(applied) if loc[: len(landed)] == landed[: len(loc)]), None
    )
    if kind == "value_error" and isinstance(ctx.get("error"), FieldError):
        loc = (*loc, *ctx["error"].field.split("."))
    if kind in ("missing", "unexpected_keyword_argument") and loc and isinstance(loc[-1], str):
        where, name = field_path(loc[:-1], tree), loc[-1]
        if kind == "missing":
            problem = f"missing field {name!r}"
        elif origin is not None:
            where, problem = "", f"unknown field {field_path(loc, tree)} (known: {_known(loc[:-1])})"
        else:
            problem = f"unknown field {name!r} (known: {_known(loc[:-1])})"
    else:
        where, problem = field_path(loc, tree), _problem(kind, ctx, value, error["msg"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    prefix = origin.label if origin is not None else source
    return f"{prefix}: {where + ': ' if where else ''}{problem}{more}"


def field_path(loc: Loc, tree: Any) -> str:
    """``teachers.athene.model`` for a named list item, ``teachers[0]`` for one without a name."""
    text, node = "", tree
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else None
            name = node.get("name") if isinstance(node, dict) else None
            text += f".{name}" if isinstance(name, str) and name else f"[{part}]"
        else:
            node = node.get(part) if isinstance(node, dict) else None
            text += f".{part}" if text else str(part)
    return text


def _known(loc: Loc) -> str:
    tp: Any = Config
    for part in loc:
        tp = declared_type(tp, part)
    tp = _optional_of(tp)
    return ", ".join(tp.__pydantic_fields__) if dataclasses.is_dataclass(tp) else "none"


MESSAGES = {
    ("int_parsing", "int_type", "int_from_float"): "expected an integer",
    ("float_parsing", "float_type"): "expected a number",
    ("bool_parsing", "bool_type"): "expected true or false",
    ("string_type",): "expected text",
    ("dataclass_type", "dataclass_args_type"): "expected a mapping of fields",
    ("dict_type",): "expected a mapping",
    ("list_type", "tuple_type"): "expected a list",
}
BOUNDS = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"), "less_than": ("lt", "<")}


def _problem(kind: str, ctx: dict[str, Any], value: Any, fallback: str) -> str:
    for kinds, text in MESSAGES.items():
        if kind in kinds:
            return f"{text}, got {_describe(value)}"
    if kind == "literal_error":
        return f"expected {ctx['expected']}, got {value!r}"
    if kind in BOUNDS:
        name, sign = BOUNDS[kind]
        return f"must be {sign} {ctx[name]}, got {value!r}"
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "missing":
        return "a value is missing"
    if kind in ("too_short", "too_long"):
        return (
            f"expected {ctx.get('max_length', ctx.get('min_length'))} values, got {ctx.get('actual_length')}"
        )
    return fallback


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)
