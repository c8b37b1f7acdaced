"""What one `wsdm-train all` run has to do, decided and checked before anything runs.

The stages that run (``--until``), the teachers that are trained rather than given as prediction
files, which models post-pretraining serves, and a preflight that stops in seconds when a later
stage could not run anyway (a missing model folder, no llm-compressor for quantize, a DeepSpeed
setting that cannot work) rather than after hours of training.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from wsdm_serve.errors import WsdmError

from ..config import Config, TeacherConfig
from ..data.inputs import pretrain_data_gap

STAGES: tuple[str, ...] = (
    "prepare",
    "pretrain",
    "finetune",
    "teacher-predict",
    "distill",
    "merge",
    "quantize",
)


@dataclass
class PipelineOptions:
    """Choices of one `wsdm-train all` run (not part of the recipe)."""

    until: str | None = None
    redo_from: str | None = None
    force: bool = False
    teacher_predictions: Path | None = None
    deepspeed: str | None = "preset"
    device: str = "auto"
    progress: bool = True


@dataclass
class Plan:
    """What this run has to do, decided before anything runs."""

    config: Config
    stages: list[str]
    trained_teachers: list[TeacherConfig]
    given: dict[str, list[Path]]  # teacher name -> its prediction file per fold
    pretrain_targets: list[str]
    no_pretrain_data: str | None = None  # why there are no post-pretraining rows

    def needed(self, stage: str) -> str | None:
        """Why ``stage`` has nothing to do, or None when it does."""
        if stage == "pretrain" and self.no_pretrain_data:
            return (
                f"no post-pretraining data ({self.no_pretrain_data}); finetune and distill start from "
                "the base model"
            )
        if stage == "pretrain" and not self.pretrain_targets:
            return "nothing starts from a post-pretrained adapter (init_from_pretrain is off)"
        if stage in ("finetune", "teacher-predict") and not self.trained_teachers:
            reason = "every teacher's predictions are given as files" if self.given else "no teachers"
            return reason
        return None


def _given_predictions(config: Config, folder: Path | None) -> tuple[Config, dict[str, list[Path]]]:
    """Fill ``distill.teacher_predictions`` from ``--teacher-predictions`` and check every file."""
    patterns = dict(config.distill.teacher_predictions)
    if folder is not None:
        if not folder.is_dir():
            raise WsdmError(f"{folder}: teacher predictions folder not found (--teacher-predictions)")
        for teacher in config.teachers:
            patterns.setdefault(
                teacher.name, str(folder / teacher.name / "fold{fold}" / "predictions.parquet")
            )
        if not config.teachers:
            raise WsdmError("--teacher-predictions: no teachers are configured to read predictions for")
    given: dict[str, list[Path]] = {}
    for name, pattern in patterns.items():
        files = [Path(pattern.format(fold=k)) for k in range(config.prepare.n_folds)]
        missing = [path for path in files if not path.is_file()]
        if missing:
            raise WsdmError(
                f"{missing[0]}: teacher predictions of {name} not found "
                f"({len(missing)} of {len(files)} folds missing; expected row_key, logit_a, logit_b)"
            )
        given[name] = files
    if patterns != config.distill.teacher_predictions:
        distill = dataclasses.replace(config.distill, teacher_predictions=patterns)
        config = dataclasses.replace(config, distill=distill)
    return config, given


def make_plan(config: Config, options: PipelineOptions) -> Plan:
    for name, value in (("--until", options.until), ("--from", options.redo_from)):
        if value is not None and value not in STAGES:
            raise WsdmError(f"{name} {value}: expected one of {', '.join(STAGES)}")
    last = STAGES.index(options.until) if options.until else len(STAGES) - 1
    if options.redo_from and STAGES.index(options.redo_from) > last:
        raise WsdmError(f"--from {options.redo_from} comes after --until {options.until}")
    config, given = _given_predictions(config, options.teacher_predictions)
    gap = pretrain_data_gap(config)
    if gap and (config.distill.init_from_pretrain or config.finetune.init_from_pretrain):
        # Nothing to post-pretrain on: the later stages start from the base model instead.
        config = dataclasses.replace(
            config,
            finetune=dataclasses.replace(config.finetune, init_from_pretrain=False),
            distill=dataclasses.replace(config.distill, init_from_pretrain=False),
        )
    trained = [t for t in config.teachers if t.name not in given]
    targets = []
    if config.distill.init_from_pretrain:
        targets.append("student")
    if config.finetune.init_from_pretrain:
        targets += [t.name for t in trained]
    return Plan(config, list(STAGES[: last + 1]), trained, given, targets, gap)


def preflight(plan: Plan, options: PipelineOptions) -> None:
    """Stop before hours of training when a later stage could not run anyway."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise WsdmError(
            "`wsdm-train all` runs in one process; under torchrun or deepspeed launch the training "
            "stages one by one (pretrain, finetune, teacher-predict, distill)"
        )
    if "quantize" in plan.stages and importlib.util.find_spec("llmcompressor") is None:
        from ..export.quantize import INSTALL_HINT

        raise WsdmError(f"{INSTALL_HINT}; or stop before quantizing with --until merge")
    from ..training.models import require_model_folder
    from ..training.stages import RunOptions, deepspeed_for

    config = plan.config
    models = []
    if {"pretrain", "distill", "merge"} & set(plan.stages):
        models.append(config.student)
    if {"pretrain", "finetune", "teacher-predict"} & set(plan.stages):
        models += plan.trained_teachers
    for spec in models:
        if spec.build_tiny is None:
            require_model_folder(spec, config)
    run = RunOptions(deepspeed=options.deepspeed, device=options.device)
    settings = []
    if "pretrain" in plan.stages and plan.needed("pretrain") is None:
        if "student" in plan.pretrain_targets:
            settings.append(config.pretrain.student)
        if any(target != "student" for target in plan.pretrain_targets):
            settings.append(config.pretrain.teacher)
    if "finetune" in plan.stages and plan.needed("finetune") is None:
        settings.append(config.finetune)
    if "distill" in plan.stages:
        settings.append(config.distill)
    for item in settings:
        deepspeed_for(item, run)
