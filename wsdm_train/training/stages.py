"""The four training stages: which data, which starting adapter, which loss, where the output goes.

Post-pretraining, fine-tuning and distillation are each a list of :class:`Job` (one per model, or
per teacher and fold, or per fold) that :func:`run_jobs` runs the same way: skip a finished run,
read its data, find its starting adapter, load the model, train it with :class:`~.trainer.Trainer`
and free it. teacher-predict only scores. Paths are in :mod:`wsdm_train.training.layout`; ``best/`` and
``final/`` are PEFT adapters, ``last/`` the resumable state, and later stages load earlier adapters
strictly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wsdm_serve.errors import WsdmError
from wsdm_serve.outputs import write_frame

from ..config import Config, ModelConfig, PretrainSettings, StageSettings, TeacherConfig
from ..data.inputs import pretrain_data_gap
from .examples import attach_teacher_logits, fold_examples, pretrain_examples
from .guards import check_logits
from .layout import Layout, resolve_folds
from .modeling import LossParts, distill_loss, pretrain_loss, two_way_ce
from .models import LoadedModel, load_for_training, release, require_model_folder
from .trainer import (
    DistContext,
    Examples,
    LossFn,
    StageResult,
    StageRun,
    dev_metrics,
    init_distributed,
    resolve_deepspeed_config,
    run_stage,
    score,
)

__all__ = [
    "Job",
    "Layout",
    "RunOptions",
    "deepspeed_for",
    "distill",
    "distillation_loss",
    "finetune",
    "letter_lm_loss",
    "load_for_training",
    "pretrain",
    "require_model_folder",
    "run_jobs",
    "teacher_predict",
    "two_way_loss",
]


def note(ctx: DistContext, message: str) -> None:
    """One line on stderr from the main process (library log config cannot swallow it)."""
    if ctx.is_main:
        print(f"note: {message}", file=sys.stderr, flush=True)


@dataclass
class RunOptions:
    """Command-line choices that are not part of the recipe."""

    deepspeed: str | None = "preset"  # "preset": what the stage settings name; None/"none": off
    device: str = "auto"
    resume: bool = True
    progress: bool = True
    force: bool = False


# --------------------------------------------------------------------------------------------------
# Losses bound to batches
# --------------------------------------------------------------------------------------------------


def letter_lm_loss(letter_ids: tuple[int, int]):
    def loss(model, batch) -> LossParts:
        _, vocab = model(batch["input_ids"], batch["attention_mask"], full_vocab=True)
        targets = torch.as_tensor(letter_ids, device=vocab.device)[batch["labels"]]
        value = pretrain_loss(vocab, targets)
        return LossParts(value, value.detach())

    return loss


def two_way_loss(model, batch) -> LossParts:
    letters, _ = model(batch["input_ids"], batch["attention_mask"])
    value = two_way_ce(letters, batch["labels"])
    return LossParts(value, value.detach())


def distillation_loss(temperature: float, mode: str):
    def loss(model, batch) -> LossParts:
        letters, _ = model(batch["input_ids"], batch["attention_mask"])
        return distill_loss(letters, batch["teacher"], batch["labels"], temperature, mode)

    return loss


# --------------------------------------------------------------------------------------------------
# One job loop for the three training stages
# --------------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """A job's training and dev rows, and what reading them found worth recording."""

    train: Examples
    dev: Examples
    info: dict = field(default_factory=dict)


@dataclass
class Job:
    """One training run of a stage, described before anything is read or loaded.

    ``inputs`` reads the data and ``init`` finds the starting adapter (either may stop with one
    line); both run only when the run is not finished already. ``loss`` binds the stage's loss to
    the loaded model (the post-pretraining loss needs its letter ids).
    """

    name: str
    out_dir: Path
    model: ModelConfig
    settings: StageSettings
    inputs: Callable[[DistContext], Inputs]
    loss: Callable[[LoadedModel], LossFn]
    init: Callable[[], Path | None] | None = None  # None: the stage starts from a fresh LoRA
    info: dict = field(default_factory=dict)

    def run_info(self, inputs: Inputs, init: Path | None) -> dict:
        """What the run records about itself (metrics log start, checkpoint info)."""
        started = {} if self.init is None else {"init": str(init) if init else None}
        return {**self.info, **inputs.info, **started}


def deepspeed_for(settings: StageSettings, options: RunOptions) -> Path | None:
    choice = settings.deepspeed if options.deepspeed == "preset" else options.deepspeed
    path = resolve_deepspeed_config(choice)
    if path is not None:
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            raise WsdmError(
                "DeepSpeed is configured for this stage but not installed: pip install 'deepspeed>=0.16', "
                "or run with --deepspeed none"
            ) from exc
    return path


@contextmanager
def _context(settings_list: list[StageSettings], options: RunOptions) -> Iterator[DistContext]:
    uses_ds = any(deepspeed_for(s, options) is not None for s in settings_list)
    yield init_distributed(uses_ds, options.device)


def _finished(out_dir: Path, options: RunOptions) -> bool:
    """A stage whose final adapter exists is skipped (re-running a pipeline continues it)."""
    return not options.force and (out_dir / "final" / "adapter_model.safetensors").exists()


def run_jobs(config: Config, jobs: list[Job], options: RunOptions) -> list[StageResult]:
    """Run every job that has not finished, one after the other, each model freed before the next."""
    results = []
    with _context([job.settings for job in jobs], options) as ctx:
        for job in jobs:
            if _finished(job.out_dir, options):
                note(
                    ctx, f"{job.out_dir}: already trained (final/ exists); skipping (use --force to retrain)"
                )
                continue
            inputs = job.inputs(ctx)
            init = job.init() if job.init is not None else None
            loaded = load_for_training(job.model, config, ctx, init, job.settings.seed)
            run = StageRun(
                name=job.name,
                out_dir=job.out_dir,
                settings=job.settings,
                head=loaded.head,
                train=inputs.train,
                dev=inputs.dev,
                loss_fn=job.loss(loaded),
                pad_id=loaded.pad_id,
                ctx=ctx,
                deepspeed=deepspeed_for(job.settings, options),
                resume=options.resume,
                progress=options.progress,
                bf16=loaded.bf16 and ctx.device.startswith("cuda"),
                extra_info=job.run_info(inputs, init),
            )
            results.append(run_stage(run))
            del loaded, run
            release()
    return results


# --------------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------------


def pretrain(config: Config, targets: list[str], options: RunOptions) -> list[StageResult]:
    """Post-pretraining of the student and/or teachers on the extra rows."""
    layout = Layout(config)
    return run_jobs(config, [_pretrain_job(config, layout, target) for target in targets], options)


def _pretrain_job(config: Config, layout: Layout, target: str) -> Job:
    role = "student" if target == "student" else "teacher"
    spec = config.student if role == "student" else config.teacher(target)
    settings = config.pretrain.student if role == "student" else config.pretrain.teacher
    data = layout.pretrain_data(role, spec.name)

    def inputs(ctx: DistContext) -> Inputs:
        gap = None if data.exists() else pretrain_data_gap(config)
        if gap:
            raise WsdmError(
                f"no post-pretraining data ({gap}): nothing to pretrain; set prepare.ut_file to a ut "
                "table and run prepare, or train without it: --set finetune.init_from_pretrain=false "
                "--set distill.init_from_pretrain=false (wsdm-train all does this by itself)"
            )
        return Inputs(*pretrain_examples(data, settings, settings.seed))

    def loss(loaded: LoadedModel) -> LossFn:
        return letter_lm_loss(loaded.letter_ids) if settings.loss == "letter_lm" else two_way_loss

    return Job(
        name=f"pretrain-{spec.name}",
        out_dir=layout.pretrain_out(role, spec.name),
        model=spec,
        settings=settings,
        inputs=inputs,
        loss=loss,
        info={"role": role, "model": spec.name},
    )


def _pretrain_handoff(layout: Layout, role: str, name: str, settings: PretrainSettings) -> Path:
    path = layout.pretrain_out(role, name) / settings.handoff
    if not (path / "adapter_model.safetensors").exists():
        target = "student" if role == "student" else name
        raise WsdmError(
            f"{path}: post-pretrained adapter not found; run `wsdm-train pretrain --target {target}` "
            "first or set init_from_pretrain: false"
        )
    return path


def _handoff(config: Config, layout: Layout, role: str, name: str, use: bool) -> Callable[[], Path | None]:
    settings = config.pretrain.student if role == "student" else config.pretrain.teacher
    return lambda: _pretrain_handoff(layout, role, name, settings) if use else None


def finetune(config: Config, teachers: list[str], folds: str, options: RunOptions) -> list[StageResult]:
    """Per-fold fine-tune of each teacher (2-way CE), starting from its post-pretrained adapter."""
    layout = Layout(config)
    jobs = []
    for name in teachers:
        spec = config.teacher(name)
        for fold in resolve_folds(folds, layout.folds(layout.processed / "teachers" / name)):
            train, dev = layout.teacher_fold(name, fold, "train"), layout.teacher_fold(name, fold, "dev")
            jobs.append(
                Job(
                    name=f"finetune-{name}-fold{fold}",
                    out_dir=layout.teacher_out(name, fold),
                    model=spec,
                    settings=config.finetune,
                    inputs=lambda ctx, train=train, dev=dev: Inputs(fold_examples(train), fold_examples(dev)),
                    loss=lambda loaded: two_way_loss,
                    init=_handoff(config, layout, "teacher", name, config.finetune.init_from_pretrain),
                    info={"role": "teacher", "model": name, "fold": fold},
                )
            )
    return run_jobs(config, jobs, options)


def distill(config: Config, folds: str, options: RunOptions) -> list[StageResult]:
    """Per-fold student distillation from every configured teacher's fold logits."""
    layout = Layout(config)
    settings = config.distill
    if not config.teachers and not settings.teacher_predictions:
        raise WsdmError("distill needs teachers: configure teachers or distill.teacher_predictions")
    names = [t.name for t in config.teachers] or sorted(settings.teacher_predictions)
    jobs = [
        Job(
            name=f"distill-fold{fold}",
            out_dir=layout.student_out(fold),
            model=config.student,
            settings=settings,
            inputs=lambda ctx, fold=fold: _distill_inputs(config, layout, names, fold, ctx),
            loss=lambda loaded: distillation_loss(settings.temperature, settings.mode),
            init=_handoff(config, layout, "student", config.student.name, settings.init_from_pretrain),
            info={"role": "student", "fold": fold, "teachers": names},
        )
        for fold in resolve_folds(folds, layout.folds(layout.processed / "student"))
    ]
    return run_jobs(config, jobs, options)


def _distill_inputs(config: Config, layout: Layout, names: list[str], fold: int, ctx: DistContext) -> Inputs:
    """The fold's student rows with every teacher's logits joined on (rows without them: the setting)."""
    settings = config.distill
    sources = []
    for name in names:
        pattern = settings.teacher_predictions.get(name)
        sources.append((name, Path(pattern.format(fold=fold)) if pattern else layout.predictions(name, fold)))
    train, dropped = attach_teacher_logits(
        fold_examples(layout.student_fold(fold, "train")), sources, settings.missing_teacher_logits
    )
    if dropped:
        note(ctx, f"fold {fold}: {dropped} training row(s) without logits from every teacher were dropped")
    return Inputs(train, fold_examples(layout.student_fold(fold, "dev")), {"dropped_rows": dropped})


# --------------------------------------------------------------------------------------------------
# Scoring: the teachers' logits for distillation
# --------------------------------------------------------------------------------------------------


def teacher_predict(config: Config, teachers: list[str], folds: str, options: RunOptions) -> list[Path]:
    """Each fold teacher's raw A/B logits on its fold's train rows and (out-of-fold) dev rows."""
    layout = Layout(config)
    written = []
    with _context([], RunOptions(deepspeed=None, device=options.device)) as ctx:
        for name in teachers:
            spec = config.teacher(name)
            for fold in resolve_folds(folds, layout.folds(layout.processed / "teachers" / name)):
                out = layout.predictions(name, fold)
                if out.exists() and not options.force:
                    note(ctx, f"{out}: exists; skipping (use --force to recompute)")
                else:
                    _predict_fold(config, layout, spec, fold, ctx, options.progress)
                written.append(out)
    return written


def _predict_fold(
    config: Config, layout: Layout, spec: TeacherConfig, fold: int, ctx: DistContext, progress: bool
) -> None:
    name, out = spec.name, layout.predictions(spec.name, fold)
    loaded = load_for_training(spec, config, ctx, layout.teacher_out(name, fold) / "best", 0, trainable=False)
    loaded.head.eval()
    frames = []
    for split in ("train", "dev"):
        examples = fold_examples(layout.teacher_fold(name, fold, split))
        logits = score(
            loaded.head,
            examples,
            loaded.pad_id,
            config.teacher_predict.batch_tokens,
            ctx,
            desc=f"{name} fold{fold} {split}",
            progress=progress,
        )
        check_logits(logits, examples.keys, f"{out} ({split} rows of fold {fold})")
        frames.append(
            pd.DataFrame(
                {
                    "row_key": examples.keys,
                    "logit_a": logits[:, 0].astype(np.float32),
                    "logit_b": logits[:, 1].astype(np.float32),
                    "out_of_fold": split == "dev",
                }
            )
        )
        if split == "dev" and ctx.is_main:
            metrics = dev_metrics(logits, examples.labels)
            note(
                ctx,
                f"{name} fold {fold} dev (out of fold): acc {metrics['acc']:.4f} "
                f"log loss {metrics['log_loss']:.4f}",
            )
    if ctx.is_main:
        write_frame(pd.concat(frames, ignore_index=True), out)
    ctx.barrier()
    del loaded
    release()
