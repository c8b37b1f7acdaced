"""Typed settings of the training stages (pretrain, finetune, teacher-predict, distill).

A preset is a YAML mapping; :func:`build_training_config` turns it into these dataclasses and
rejects unknown keys and wrong types with one line that names the field, so a typo in a preset
cannot silently fall back to a default. ``--set section.field=value`` overrides are applied to the
mapping first (values are parsed as YAML: ``--set distill.temperature=2`` gives a float).

Batch sizes are counted in sequences. ``effective_batch`` is what one optimizer step sees over all
GPUs together; the gradient accumulation is derived from it and the world size at run time, so the
recipe is the same on 1 GPU or 64.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsdm_serve.errors import WsdmError

from .modeling import DISTILL_MODES, LoadSettings, LoraSettings

PRESET_DIR = Path(__file__).parent / "train_presets"
PRETRAIN_LOSSES = ("letter_lm", "two_way")
HANDOFFS = ("final", "best")
SCHEDULERS = ("cosine", "linear", "constant_with_warmup", "constant")


@dataclass
class EvalCadence:
    """When the dev set is scored, in optimizer steps (independent of the GPU count).

    The reference scored at the first and last micro-step of each epoch and every N micro-steps
    once past a fraction of epoch 1; with its fixed accumulation those N micro-steps are N / GA
    optimizer steps, which is what ``every_steps`` holds.
    """

    at_epoch_start: bool = True
    at_epoch_end: bool = True
    every_steps: int = 0
    start_fraction: float = 0.0
    start_step: int = 0


@dataclass
class StageSettings:
    """Optimisation settings shared by every training stage."""

    epochs: int = 1
    learning_rate: float = 5e-5
    effective_batch: int = 64
    per_device_batch: int = 1
    warmup_steps: int = 0
    warmup_ratio: float = 0.015
    scheduler: str = "cosine"
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 1234
    eval: EvalCadence = field(default_factory=EvalCadence)
    eval_batch_tokens: int = 16384
    deepspeed: str | None = None
    max_steps: int = 0
    log_every: int = 10
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise WsdmError(f"scheduler {self.scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
        for name in ("epochs", "effective_batch", "per_device_batch", "eval_batch_tokens"):
            if getattr(self, name) < 1:
                raise WsdmError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise WsdmError(f"learning_rate must be > 0, got {self.learning_rate}")

    def warmup_for(self, total_steps: int) -> int:
        """Fixed warmup steps if given, else ceil(ratio x total) as the reference's fine-tunes."""
        import math

        if self.warmup_steps > 0:
            return self.warmup_steps
        return math.ceil(self.warmup_ratio * total_steps)


@dataclass
class PretrainSettings(StageSettings):
    """Post-pretraining on the extra (ut) preference rows.

    ``letter_lm``: full-vocabulary next-token CE on the answer letter (the student's recipe);
    ``two_way``: CE over the two letter logits (the teachers'). ``both_orders`` puts a row and its
    swapped copy in the same micro-batch. ``dev_rows`` rows are held out of training for the dev
    score (the reference sampled its dev rows from the training rows). ``handoff`` is the
    checkpoint later stages start from: the reference's post-pretrain folder ended up holding the
    final weights.
    """

    loss: str = "letter_lm"
    both_orders: bool = True
    dev_rows: int = 100
    handoff: str = "final"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in PRETRAIN_LOSSES:
            raise WsdmError(f"pretrain loss {self.loss!r}: expected one of {', '.join(PRETRAIN_LOSSES)}")
        if self.handoff not in HANDOFFS:
            raise WsdmError(f"pretrain handoff {self.handoff!r}: expected one of {', '.join(HANDOFFS)}")
        if self.both_orders and self.per_device_batch % 2:
            raise WsdmError("pretrain with both_orders needs an even per_device_batch (a row and its swap)")


@dataclass
class PretrainSections:
    student: PretrainSettings = field(default_factory=PretrainSettings)
    teacher: PretrainSettings = field(default_factory=PretrainSettings)


@dataclass
class FinetuneSettings(StageSettings):
    """Per-fold teacher fine-tune with the 2-way CE, starting from the post-pretrained adapter."""

    init_from_pretrain: bool = True


@dataclass
class DistillSettings(StageSettings):
    """Per-fold student distillation from every teacher's fold logits.

    ``teacher_predictions`` maps a teacher name to a predictions file pattern with ``{fold}``
    (the reference's "fast train" path); teachers not named use the teacher-predict output.
    ``missing_teacher_logits``: ``error`` stops when a training row has no logits from some
    teacher; ``drop`` trains without those rows and reports how many were dropped.
    """

    temperature: float = 1.0
    mode: str = "reference"
    init_from_pretrain: bool = True
    missing_teacher_logits: str = "error"
    teacher_predictions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in DISTILL_MODES:
            raise WsdmError(f"distill mode {self.mode!r}: expected one of {', '.join(DISTILL_MODES)}")
        if self.temperature <= 0:
            raise WsdmError(f"distill temperature must be > 0, got {self.temperature}")
        if self.missing_teacher_logits not in ("error", "drop"):
            raise WsdmError("distill missing_teacher_logits: expected error or drop")


@dataclass
class TeacherPredictSettings:
    batch_tokens: int = 16384


@dataclass
class ModelSpec:
    """A base model: where it is, how it is loaded; ``build_tiny`` makes a random one if absent."""

    name: str = "student"
    model: str = "model_path/qwen2"
    tokenizer: str | None = None
    load_in_4bit: bool = False
    dtype: str = "auto"
    gradient_checkpointing: bool = True
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    build_tiny: dict[str, Any] | None = None

    def load_settings(self) -> LoadSettings:
        return LoadSettings(
            load_in_4bit=self.load_in_4bit,
            dtype=self.dtype,
            gradient_checkpointing=self.gradient_checkpointing,
            trust_remote_code=self.trust_remote_code,
            attn_implementation=self.attn_implementation,
        )


@dataclass
class PathsSettings:
    data_dir: str = "data"
    processed_dir: str = "data/processed"
    model_dir: str = "model_save"


@dataclass
class LoraSection:
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: tuple[str, ...] = LoraSettings.target_modules

    def settings(self) -> LoraSettings:
        return LoraSettings(self.r, self.alpha, self.dropout, tuple(self.target_modules))


@dataclass
class TrainingConfig:
    paths: PathsSettings = field(default_factory=PathsSettings)
    student: ModelSpec = field(default_factory=ModelSpec)
    teachers: list[ModelSpec] = field(default_factory=list)
    lora: LoraSection = field(default_factory=LoraSection)
    pretrain: PretrainSections = field(default_factory=PretrainSections)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    teacher_predict: TeacherPredictSettings = field(default_factory=TeacherPredictSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)

    def teacher(self, name: str) -> ModelSpec:
        for spec in self.teachers:
            if spec.name == name:
                return spec
        known = ", ".join(t.name for t in self.teachers) or "none configured"
        raise WsdmError(f"unknown teacher {name!r} (known: {known})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Mapping -> dataclasses
# --------------------------------------------------------------------------------------------------

TRAINING_SECTIONS = {f.name for f in dataclasses.fields(TrainingConfig)}


def build_training_config(mapping: dict, source: str = "config") -> TrainingConfig:
    """Typed config from a preset mapping; sections owned by other stages (``prepare``...) are ignored."""
    if not isinstance(mapping, dict):
        raise WsdmError(f"{source}: expected a mapping of sections at the top level")
    known = {key: value for key, value in mapping.items() if key in TRAINING_SECTIONS}
    return _build(TrainingConfig, known, source)


def _build(cls, value, where: str):
    if not isinstance(value, dict):
        raise WsdmError(f"{where}: expected a mapping, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in value if key not in fields]
    if unknown:
        raise WsdmError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(fields)})")
    kwargs = {key: _convert(hints[key], item, f"{where}.{key}") for key, item in value.items()}
    try:
        return cls(**kwargs)
    except WsdmError as exc:
        raise WsdmError(f"{where}: {exc}") from exc


def _convert(hint, value, where: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, where)
            except WsdmError as exc:
                errors.append(str(exc))
        raise WsdmError(errors[0])
    if dataclasses.is_dataclass(hint):
        return _build(hint, value or {}, where)
    if origin is list:
        if not isinstance(value, list):
            raise WsdmError(f"{where}: expected a list")
        return [_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise WsdmError(f"{where}: expected a list")
        item_type = args[0]
        if len(args) == 2 and args[1] is not Ellipsis and len(value) != 2:
            raise WsdmError(f"{where}: expected 2 values")
        return tuple(_convert(item_type, item, where) for item in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise WsdmError(f"{where}: expected a mapping")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise WsdmError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WsdmError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WsdmError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise WsdmError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def apply_overrides(mapping: dict, overrides: list[str]) -> dict:
    """``section.field=value`` (list items by index: ``teachers.0.load_in_4bit=false``)."""
    import copy

    import yaml

    mapping = copy.deepcopy(mapping)
    for item in overrides:
        if "=" not in item:
            raise WsdmError(f"--set {item}: expected section.field=value")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if len(parts) < 2:
            raise WsdmError(f"--set {item}: expected section.field=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node: Any = mapping
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = _list_item(node, part, item)
                continue
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict | list):
                raise WsdmError(f"--set {item}: {'.'.join(parts[: depth + 1])} is not a section")
        last = parts[-1]
        if isinstance(node, list):
            index = _list_index(node, last, item)
            node[index] = value
        else:
            node[last] = value
    return mapping


def _list_index(node: list, part: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise WsdmError(f"--set {item}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _list_item(node: list, part: str, item: str):
    return node[_list_index(node, part, item)]


def read_preset(name_or_path: str) -> tuple[dict, str]:
    """A preset shipped with the package (by name) or a YAML file (by path)."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        shipped = PRESET_DIR / f"{name_or_path}.yaml"
        if not shipped.exists():
            names = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
            raise WsdmError(f"unknown preset {name_or_path!r} (shipped: {names}; or pass a .yaml file)")
        path = shipped
    if not path.exists():
        raise WsdmError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise WsdmError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    return data, str(path)


def load_training_config(name_or_path: str, overrides: list[str] | None = None) -> TrainingConfig:
    mapping, source = read_preset(name_or_path)
    mapping = apply_overrides(mapping, list(overrides or []))
    return build_training_config(mapping, source)
