"""Typed training configuration: dataclasses, YAML presets and ``--set`` overrides.

The dataclass defaults are the published recipe (the `reference` preset states the same values
explicitly, and a test keeps the two equal). A preset or a user file is plain YAML; a user file may
start from a preset with ``base: reference`` and change only what differs. Every field can be
overridden from the command line with ``--set section.field=value``; list items are addressed by
index or, for teachers, by name (``--set teachers.athene.model=/models/athene``).

Each top-level section is its own dataclass and is registered in :class:`Config`; unknown keys are
errors (a typo must not silently fall back to a default). A training stage adds its options by
adding fields to its section's dataclass.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

from wsdm_serve.errors import WsdmError
from wsdm_serve.truncation import TruncationConfig

PRESETS: tuple[str, ...] = ("reference", "tiny")


# --------------------------------------------------------------------------- sections


@dataclass(kw_only=True)
class PathsConfig:
    """Where inputs are read and outputs written; relative paths are relative to the current folder."""

    data_dir: str = "data"
    processed_dir: str = "data/processed"
    model_dir: str = "model_save"


@dataclass(kw_only=True)
class Budget:
    """Token budget of query + both responses, and the word cap applied to each response first."""

    token_budget: int
    response_word_cap: int


BUDGETS = (
    "student_train",
    "student_dev",
    "student_pretrain",
    "teacher_train",
    "teacher_dev",
    "teacher_pretrain",
)


@dataclass(kw_only=True)
class PrepareConfig:
    """Inputs and budgets of `wsdm-train prepare` (reference section 1 and 2.2).

    Input files are relative to ``paths.data_dir`` unless absolute; ``null`` disables an extra
    table. A missing extra table is reported and skipped (the reference always had both).
    """

    train_file: str = "train.parquet"
    lmsys_file: str | None = "notie_lmsys.csv"
    ut_file: str | None = "ut_multi.csv"
    n_folds: int = 5
    fold_seed: int = 2025
    query_word_cap: int = 256
    query_token_cap: int = 256
    student_train: Budget = field(default_factory=lambda: Budget(token_budget=2048, response_word_cap=1400))
    student_dev: Budget = field(default_factory=lambda: Budget(token_budget=10000, response_word_cap=4200))
    student_pretrain: Budget = field(
        default_factory=lambda: Budget(token_budget=1024, response_word_cap=1400)
    )
    teacher_train: Budget = field(default_factory=lambda: Budget(token_budget=2048, response_word_cap=1400))
    teacher_dev: Budget = field(default_factory=lambda: Budget(token_budget=2048, response_word_cap=1400))
    teacher_pretrain: Budget = field(default_factory=lambda: Budget(token_budget=1024, response_word_cap=700))
    # The teachers' ut data kept only prompts with fewer than this many space-separated pieces.
    teacher_pretrain_max_words: int | None = 1200

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise WsdmError(f"prepare.n_folds: need at least 2 folds, got {self.n_folds}")
        for name in ("query_word_cap", "query_token_cap"):
            if getattr(self, name) < 0:
                raise WsdmError(f"prepare.{name}: must be >= 0")
        for name in BUDGETS:
            budget = getattr(self, name)
            if budget.token_budget < 1 or budget.response_word_cap < 0:
                raise WsdmError(f"prepare.{name}: token_budget must be >= 1 and response_word_cap >= 0")

    def truncation(self, budget: Budget) -> TruncationConfig:
        return TruncationConfig(
            token_budget=budget.token_budget,
            response_word_cap=budget.response_word_cap,
            query_word_cap=self.query_word_cap,
            query_token_cap=self.query_token_cap,
        )


@dataclass(kw_only=True)
class TinyModelSpec:
    """A random tiny Qwen2 (``wsdm_serve.tiny.build_tiny_model``) for runs without real weights."""

    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 128
    seed: int = 0


@dataclass(kw_only=True)
class StudentConfig:
    """The judge being trained. ``tokenizer`` defaults to the model folder."""

    model: str = "model_save/pretrained/Qwen2.5-14B-Instruct"
    tokenizer: str | None = None
    hf_id: str | None = "Qwen/Qwen2.5-14B-Instruct"
    build_tiny: TinyModelSpec | None = None

    @property
    def tokenizer_dir(self) -> str:
        return self.tokenizer or self.model


@dataclass(kw_only=True)
class TeacherConfig:
    """One teacher; ``name`` names its folders (processed data, adapters, predictions)."""

    name: str
    model: str
    tokenizer: str | None = None
    hf_id: str | None = None
    build_tiny: TinyModelSpec | None = None

    @property
    def tokenizer_dir(self) -> str:
        return self.tokenizer or self.model


def _reference_teachers() -> list[TeacherConfig]:
    return [
        TeacherConfig(
            name="athene", model="model_save/pretrained/Athene-V2-Chat", hf_id="Nexusflow/Athene-V2-Chat"
        ),
        TeacherConfig(
            name="llama3n",
            model="model_save/pretrained/Llama-3.1-Nemotron-70B-Instruct-HF",
            hf_id="nvidia/Llama-3.1-Nemotron-70B-Instruct-HF",
        ),
        TeacherConfig(
            name="qwen2",
            model="model_save/pretrained/Qwen2.5-72B-Instruct",
            hf_id="Qwen/Qwen2.5-72B-Instruct",
        ),
    ]


@dataclass(kw_only=True)
class PretrainConfig:
    """Post-pretraining on ut data (reference 3.4, 4.2); fields are added by the training stage."""


@dataclass(kw_only=True)
class FinetuneConfig:
    """Per-fold teacher fine-tuning (reference 3.5); fields are added by the training stage."""


@dataclass(kw_only=True)
class TeacherPredictConfig:
    """Per-fold teacher logits (reference 3.6); fields are added by the training stage."""


@dataclass(kw_only=True)
class DistillConfig:
    """Per-fold student distillation (reference 4.3); fields are added by the training stage."""


@dataclass(kw_only=True)
class Config:
    """The whole training configuration; one attribute per YAML section."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teachers: list[TeacherConfig] = field(default_factory=_reference_teachers)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    teacher_predict: TeacherPredictConfig = field(default_factory=TeacherPredictConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        names = [t.name for t in self.teachers]
        for name in names:
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise WsdmError(f"teachers: {name!r} is not a usable folder name")
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise WsdmError(f"teachers: duplicate name {duplicated[0]!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading


def load_config(name_or_path: str | Path, overrides: typing.Iterable[str] = ()) -> Config:
    """A preset name (``reference``, ``tiny``) or a YAML file, then ``section.field=value`` overrides."""
    source = str(name_or_path)
    tree = _load_tree(source, chain=())
    config = _typed(tree, source)
    overrides = list(overrides)
    if not overrides:
        return config
    tree = config.to_dict()
    for item in overrides:
        _apply_override(tree, item)
    return _typed(tree, source)


def _typed(tree: dict[str, Any], source: str) -> Config:
    try:
        return build(Config, tree, "config")
    except WsdmError as exc:
        raise WsdmError(f"config {source}: {exc}") from None


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
    return _merge(_load_tree(base, (*chain, name_or_path)), tree)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) replaces the base value."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(tree: dict[str, Any], item: str) -> None:
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
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, part, item, where)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if part not in node:
                known = ", ".join(map(str, node)) or "none"
                raise WsdmError(f"--set {item}: unknown field {where} (known: {known})")
            if last:
                node[part] = _keep_text(node[part], value, raw)
            else:
                if node[part] is None:
                    node[part] = {}
                node = node[part]
        else:
            raise WsdmError(f"--set {item}: {'.'.join(parts[:depth])} has no fields")


def _keep_text(current: Any, value: Any, raw: str) -> Any:
    """A text field keeps the text as typed: `--set paths.data_dir=2025` is the folder "2025"."""
    if isinstance(current, str) and value is not None and not isinstance(value, str | dict | list):
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


# --------------------------------------------------------------------------- typing


def build(tp: Any, value: Any, where: str) -> Any:
    """Turn a YAML value into ``tp`` (dataclass, list, optional, scalar), naming the key on error."""
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
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise WsdmError(f"{where}: expected a mapping, got {_describe(value)}")
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
    return cls(**kwargs)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
