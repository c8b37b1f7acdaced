"""Typed configuration of every `wsdm-train` command: sections, YAML presets, overrides.

One configuration drives the whole chain (prepare, the training stages, merge, quantize and `all`).
Each YAML section is a pydantic dataclass (:mod:`.types`), grouped by stage: paths and prepare
(:mod:`.data`), the models and their LoRA (:mod:`.models`), the training stages (:mod:`.training`),
merge and quantize (:mod:`.export`), all registered in :class:`Config` (:mod:`.recipe`).
:func:`load_config` (:mod:`.loading`) reads a preset or a YAML file with ``base:`` inheritance and
applies ``--set section.field=value`` overrides; a bad value is one line naming the field path.

Loading a configuration imports pydantic and PyYAML but neither torch nor the training libraries.
"""

from .data import BUDGETS, Budget, FoldGrouping, PathsConfig, PrepareConfig
from .export import (
    MERGE_DTYPES,
    MERGE_MODES,
    QUANT_DTYPES,
    QUANT_FORMATS,
    QUANTIZE_PATH_FIELDS,
    MergeConfig,
    MergeMode,
    QuantFormat,
    QuantizeConfig,
)
from .loading import PRESETS, Override, load_config, parse_set
from .models import (
    LORA_TARGETS,
    LoadSettings,
    LoraSettings,
    ModelConfig,
    StudentConfig,
    TeacherConfig,
    TinyModelSpec,
)
from .recipe import Config
from .training import (
    DISTILL_MODES,
    HANDOFFS,
    PRETRAIN_LOSSES,
    SCHEDULERS,
    DistillSettings,
    EvalCadence,
    FinetuneSettings,
    PretrainSections,
    PretrainSettings,
    StageSettings,
    TeacherPredictSettings,
)

__all__ = [
    "BUDGETS",
    "DISTILL_MODES",
    "HANDOFFS",
    "LORA_TARGETS",
    "MERGE_DTYPES",
    "MERGE_MODES",
    "PRESETS",
    "PRETRAIN_LOSSES",
    "QUANTIZE_PATH_FIELDS",
    "QUANT_DTYPES",
    "QUANT_FORMATS",
    "SCHEDULERS",
    "Budget",
    "Config",
    "DistillSettings",
    "EvalCadence",
    "FinetuneSettings",
    "FoldGrouping",
    "LoadSettings",
    "LoraSettings",
    "MergeConfig",
    "MergeMode",
    "ModelConfig",
    "Override",
    "PathsConfig",
    "PrepareConfig",
    "PretrainSections",
    "PretrainSettings",
    "QuantFormat",
    "QuantizeConfig",
    "StageSettings",
    "StudentConfig",
    "TeacherConfig",
    "TeacherPredictSettings",
    "TinyModelSpec",
    "load_config",
    "parse_set",
]
