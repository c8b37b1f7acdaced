"""The whole training configuration: one attribute per YAML section, and the paths it implies."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, field_validator

from wsdm_serve.errors import WsdmError

from .data import PathsConfig, PrepareConfig
from .export import MergeConfig, QuantizeConfig
from .models import LoraSettings, ModelConfig, StudentConfig, TeacherConfig, reference_teachers
from .training import DistillSettings, FinetuneSettings, PretrainSections, TeacherPredictSettings
from .types import section


@section
class Config:
    """The whole training configuration; one attribute per YAML section.

    The defaults are the published recipe (the `reference` preset states the same values
    explicitly, and a test keeps the two equal).
    """

    paths: PathsConfig = field(default_factory=PathsConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teachers: list[TeacherConfig] = field(default_factory=reference_teachers)
    lora: LoraSettings = field(default_factory=LoraSettings)
    pretrain: PretrainSections = field(default_factory=PretrainSections)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    teacher_predict: TeacherPredictSettings = field(default_factory=TeacherPredictSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    merge: MergeConfig = field(default_factory=MergeConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)

    @field_validator("teachers")
    @classmethod
    def _distinct_names(cls, teachers: list[TeacherConfig]) -> list[TeacherConfig]:
        names = [teacher.name for teacher in teachers]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"duplicate name {duplicated[0]!r}")
        return teachers

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON values (tuples become lists), as a preset file would state them."""
        return CONFIG_ADAPTER.dump_python(self, mode="json")

    def teacher(self, name: str) -> TeacherConfig:
        for spec in self.teachers:
            if spec.name == name:
                return spec
        known = ", ".join(t.name for t in self.teachers) or "none configured"
        raise WsdmError(f"unknown teacher {name!r} (known: {known})")

    def model_path(self, spec: ModelConfig) -> Path:
        """The model folder of the student or a teacher (a tiny model's default place if unset)."""
        if spec.model:
            return Path(spec.model)
        return Path(self.paths.model_dir) / "pretrained" / spec.name  # type: ignore[attr-defined]

    def merged_dir(self) -> Path:
        return Path(self.merge.out) if self.merge.out else Path(self.paths.model_dir) / "merged"

    def quantize_input(self) -> Path:
        return Path(self.quantize.model) if self.quantize.model else self.merged_dir()

    def calibration_file(self) -> Path:
        if self.quantize.calibration:
            return Path(self.quantize.calibration)
        return Path(self.paths.processed_dir) / "student" / "fold0" / "train.parquet"

    def final_dir(self) -> Path:
        return Path(self.quantize.out) if self.quantize.out else Path(self.paths.model_dir) / "final_model"


CONFIG_ADAPTER = TypeAdapter(Config)
