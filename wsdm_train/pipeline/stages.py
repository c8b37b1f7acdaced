"""Each stage of `wsdm-train all` as the pipeline sees it: what its hash covers, where its outputs
are, how it runs and how its old outputs are cleared before it starts over.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from .plan import PipelineOptions, Plan

# Settings that change how a stage runs but not what it computes; they do not make a stage redo.
RUN_ONLY_FIELDS = ("deepspeed", "log_every", "checkpoint_every")


def _recipe(section: Any) -> Any:
    """A section as a dict without the fields that only change how it runs."""
    values = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section)
    for name in RUN_ONLY_FIELDS:
        values.pop(name, None)
    return values


def _sha256_file(path: Path) -> str:
    from ..data.manifest import sha256_file

    return sha256_file(path)


class Stages:
    """Each stage: what its hash covers, where its outputs are, how to run and how to clear it."""

    def __init__(self, plan: Plan, options: PipelineOptions) -> None:
        self.plan = plan
        self.config = plan.config
        self.options = options
        from ..training.stages import Layout

        self.layout = Layout(self.config)

    def _run_options(self, force: bool = False):
        from ..training.stages import RunOptions

        return RunOptions(
            deepspeed=self.options.deepspeed,
            device=self.options.device,
            resume=True,
            progress=self.options.progress,
            force=force,
        )

    def _folds(self) -> range:
        return range(self.config.prepare.n_folds)

    # -- what a stage depends on (besides the stage before it)

    def settings(self, stage: str) -> dict[str, Any]:
        config, plan = self.config, self.plan
        teachers = [dataclasses.asdict(t) for t in plan.trained_teachers]
        if stage == "pretrain":
            return {
                "targets": plan.pretrain_targets,
                "student": dataclasses.asdict(config.student) if "student" in plan.pretrain_targets else None,
                "teachers": [t for t in teachers if t["name"] in plan.pretrain_targets],
                "lora": dataclasses.asdict(config.lora),
                "student_settings": _recipe(config.pretrain.student),
                "teacher_settings": _recipe(config.pretrain.teacher),
            }
        if stage == "finetune":
            return {
                "teachers": teachers,
                "lora": dataclasses.asdict(config.lora),
                "finetune": _recipe(config.finetune),
            }
        if stage == "teacher-predict":
            return {
                "teachers": [t["name"] for t in teachers],
                "teacher_predict": _recipe(config.teacher_predict),
            }
        if stage == "distill":
            distill = _recipe(config.distill)
            distill.pop("teacher_predictions")
            given = {name: [_sha256_file(p) for p in files] for name, files in sorted(plan.given.items())}
            return {
                "student": dataclasses.asdict(config.student),
                "lora": dataclasses.asdict(config.lora),
                "distill": distill,
                "teachers": [t.name for t in config.teachers],
                "given_predictions": given,
            }
        if stage == "merge":
            return {
                "merge": dataclasses.asdict(config.merge),
                "base": str(config.model_path(config.student)),
                "tokenizer": config.student.tokenizer,
                "folds": config.prepare.n_folds,
            }
        if stage == "quantize":
            return {
                "quantize": dataclasses.asdict(config.quantize),
                "model": str(config.quantize_input()),
                "calibration": str(config.calibration_file()),
            }
        raise ValueError(stage)

    # -- outputs

    def outputs(self, stage: str) -> list[Path]:
        layout, plan = self.layout, self.plan
        teachers = [t.name for t in plan.trained_teachers]
        if stage == "pretrain":
            return [
                layout.pretrain_out("student" if name == "student" else "teacher", name)
                for name in plan.pretrain_targets
            ]
        if stage == "finetune":
            return [layout.teacher_out(name, k) for name in teachers for k in self._folds()]
        if stage == "teacher-predict":
            return [layout.predictions(name, k) for name in teachers for k in self._folds()]
        if stage == "distill":
            return [layout.student_out(k) for k in self._folds()]
        if stage == "merge":
            return [self.config.merged_dir()]
        if stage == "quantize":
            return [self.config.final_dir()]
        raise ValueError(stage)

    def finished_outputs(self, stage: str) -> list[Path]:
        """Files whose existence says the stage's outputs are still there."""
        paths = self.outputs(stage)
        if stage in ("pretrain", "finetune", "distill"):
            return [path / "final" / "adapter_model.safetensors" for path in paths]
        if stage in ("merge", "quantize"):
            return [path / "config.json" for path in paths]
        return paths

    def clear(self, stage: str) -> None:
        """Remove a stage's old outputs before it starts over (merge and quantize replace theirs)."""
        if stage in ("merge", "quantize"):
            return
        for path in self.outputs(stage):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    # -- running

    def run(self, stage: str, fresh: bool) -> str:
        from ..training import stages

        config, plan = self.config, self.plan
        options = self._run_options()
        teachers = [t.name for t in plan.trained_teachers]
        if stage == "pretrain":
            results = stages.pretrain(config, plan.pretrain_targets, options)
            return _trained(results)
        if stage == "finetune":
            return _trained(stages.finetune(config, teachers, "all", options))
        if stage == "teacher-predict":
            written = stages.teacher_predict(config, teachers, "all", options)
            return f"{len(written)} prediction file(s)"
        if stage == "distill":
            return _trained(stages.distill(config, "all", options))
        if stage == "merge":
            from ..export.merge import merge_from_config

            return merge_from_config(config, force=fresh).summary()
        if stage == "quantize":
            from ..export.quantize import quantize_from_config

            return quantize_from_config(config, force=fresh).summary()
        raise ValueError(stage)


def _trained(results) -> str:
    if not results:
        return "every run had finished before"
    best = ", ".join(f"{r.out_dir.name} {r.best_acc:.3f}" for r in results)
    return f"{len(results)} run(s); best dev acc: {best}"
