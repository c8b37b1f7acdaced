"""The four training stages: which data, which starting adapter, which loss, where the output goes.

Inputs follow the processed-data contract written by ``wsdm-train prepare``; outputs land under
``paths.model_dir``::

    student/pretrain/{best,final,last}/ + metrics.jsonl
    teachers/{name}/pretrain/...
    teachers/{name}/fold{k}/{best,final,last}/ + metrics.jsonl + predictions.parquet
    student/fold{k}/{best,final,last}/ + metrics.jsonl

``best/`` and ``final/`` are PEFT adapters (adapter_model.safetensors + adapter_config.json);
``last/`` is the resumable state. Later stages load earlier adapters strictly.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wsdm_serve.errors import WsdmError
from wsdm_serve.outputs import atomic_directory, write_frame
from wsdm_serve.prompt import letter_token_ids
from wsdm_serve.tokenizer import load_tokenizer

from .config import Config, ModelConfig, PretrainSettings, StageSettings, StudentConfig
from .guards import check_logits, configure_attention
from .inputs import pretrain_data_gap
from .modeling import (
    LetterHead,
    LossParts,
    attach_lora,
    distill_loss,
    gradient_checkpointing_active,
    load_base_model,
    pretrain_loss,
    two_way_ce,
)
from .stage_data import attach_teacher_logits, fold_examples, pretrain_examples
from .trainer import (
    DistContext,
    Examples,
    StageResult,
    StageRun,
    dev_metrics,
    init_distributed,
    resolve_deepspeed_config,
    run_stage,
    score,
    seed_everything,
)


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
# Layout
# --------------------------------------------------------------------------------------------------


class Layout:
    def __init__(self, config: Config) -> None:
        self.processed = Path(config.paths.processed_dir)
        self.models = Path(config.paths.model_dir)

    def student_fold(self, fold: int, split: str) -> Path:
        return self.processed / "student" / f"fold{fold}" / f"{split}.parquet"

    def teacher_fold(self, name: str, fold: int, split: str) -> Path:
        return self.processed / "teachers" / name / f"fold{fold}" / f"{split}.parquet"

    def pretrain_data(self, role: str, name: str) -> Path:
        base = self.processed / "student" if role == "student" else self.processed / "teachers" / name
        return base / "pretrain.parquet"

    def pretrain_out(self, role: str, name: str) -> Path:
        return (
            self.models / "student" / "pretrain"
            if role == "student"
            else self.models / "teachers" / name / "pretrain"
        )

    def teacher_out(self, name: str, fold: int) -> Path:
        return self.models / "teachers" / name / f"fold{fold}"

    def student_out(self, fold: int) -> Path:
        return self.models / "student" / f"fold{fold}"

    def predictions(self, name: str, fold: int) -> Path:
        return self.teacher_out(name, fold) / "predictions.parquet"

    def folds(self, base: Path) -> list[int]:
        found = sorted(
            int(m.group(1)) for p in base.glob("fold*") if (m := re.fullmatch(r"fold(\d+)", p.name))
        )
        if not found:
            raise WsdmError(f"{base}: no fold folders; run `wsdm-train prepare` first")
        return found


def resolve_folds(choice: str, available: list[int]) -> list[int]:
    if choice == "all":
        return available
    try:
        folds = [int(part) for part in choice.split(",")]
    except ValueError:
        raise WsdmError(f"--fold {choice}: expected all, a fold number or a comma list") from None
    missing = [f for f in folds if f not in available]
    if missing:
        raise WsdmError(f"--fold {choice}: fold {missing[0]} not prepared (available: {available})")
    return folds


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


TINY_SPEC = "wsdm_tiny_model.json"


def _field(spec: ModelConfig) -> str:
    """How the configuration names this model's entry (for error messages)."""
    return "student" if isinstance(spec, StudentConfig) else f"teachers.{spec.name}"


def ensure_model(spec: ModelConfig, config: Config, ctx: DistContext) -> Path:
    """The model folder; a ``build_tiny`` spec creates a random tiny Qwen2 there.

    A tiny model is rebuilt when its recorded spec differs from the configured one, so a changed
    ``build_tiny`` never trains on a stale model; a folder without that record is never touched.
    """
    path = config.model_path(spec)
    if spec.build_tiny is not None:
        wanted = {"spec": dataclasses.asdict(spec.build_tiny), "tokenizer": spec.tokenizer_dir}
        record = path / TINY_SPEC
        current = None
        if record.exists():
            try:
                current = json.loads(record.read_text())
            except ValueError:
                current = None
        fresh = not (path / "config.json").exists() or (record.exists() and current != wanted)
        if fresh:
            if ctx.is_main:
                from wsdm_serve.tiny import build_tiny_model

                if not Path(spec.tokenizer_dir).is_dir():
                    raise WsdmError(
                        f"{spec.tokenizer_dir}: tokenizer folder not found ({_field(spec)}.tokenizer)"
                    )
                with atomic_directory(path) as tmp:
                    build_tiny_model(tmp, spec.tokenizer_dir, **dataclasses.asdict(spec.build_tiny))
                    (tmp / TINY_SPEC).write_text(json.dumps(wanted, indent=1) + "\n")
            ctx.barrier()
        return path
    return require_model_folder(spec, config)


def require_model_folder(spec: ModelConfig, config: Config) -> Path:
    """The folder of a model that is not built here; missing, it is one line naming the field."""
    path = config.model_path(spec)
    if not (path / "config.json").is_file():
        hint = f"; download {spec.hf_id} there" if spec.hf_id else ""
        raise WsdmError(f"{path}: model folder not found ({_field(spec)}.model){hint}")
    return path


@dataclass
class LoadedModel:
    head: LetterHead
    pad_id: int
    letter_ids: tuple[int, int]
    bf16: bool


def load_for_training(
    spec: ModelConfig,
    config: Config,
    ctx: DistContext,
    init_adapter: Path | None,
    seed: int,
    trainable: bool = True,
) -> LoadedModel:
    model_dir = ensure_model(spec, config, ctx)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=spec.trust_remote_code)
    letters = letter_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise WsdmError(f"{model_dir}: tokenizer has neither a pad nor an eos token")
    seed_everything(seed)  # the LoRA initialisation is part of the run's reproducibility
    configure_attention(spec.sdpa_cudnn)
    settings = spec.load_settings()
    base = load_base_model(model_dir, settings, ctx.device, training=trainable)
    if base.config.pad_token_id is None:
        base.config.pad_token_id = pad_id
    model = attach_lora(base, config.lora, init_adapter, trainable=trainable)
    if trainable and settings.gradient_checkpointing and not gradient_checkpointing_active(model):
        raise WsdmError(f"{model_dir}: gradient checkpointing was requested but the model did not enable it")
    head = (
        LetterHead(model, letters).to(ctx.device) if not settings.load_in_4bit else LetterHead(model, letters)
    )
    bf16 = next(base.parameters()).dtype == torch.bfloat16 or settings.load_in_4bit
    return LoadedModel(head, int(pad_id), letters, bf16)


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
# Stages
# --------------------------------------------------------------------------------------------------


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


def _train(
    name: str,
    out_dir: Path,
    settings: StageSettings,
    loaded: LoadedModel,
    train: Examples,
    dev: Examples,
    loss_fn,
    ctx: DistContext,
    options: RunOptions,
    info: dict,
) -> StageResult:
    run = StageRun(
        name=name,
        out_dir=out_dir,
        settings=settings,
        head=loaded.head,
        train=train,
        dev=dev,
        loss_fn=loss_fn,
        pad_id=loaded.pad_id,
        ctx=ctx,
        deepspeed=deepspeed_for(settings, options),
        resume=options.resume,
        progress=options.progress,
        bf16=loaded.bf16 and ctx.device.startswith("cuda"),
        extra_info=info,
    )
    return run_stage(run)


def _finished(out_dir: Path, options: RunOptions) -> bool:
    """A stage whose final adapter exists is skipped (re-running a pipeline continues it)."""
    return not options.force and (out_dir / "final" / "adapter_model.safetensors").exists()


def pretrain(config: Config, targets: list[str], options: RunOptions) -> list[StageResult]:
    """Post-pretraining of the student and/or teachers on the extra rows."""
    layout = Layout(config)
    jobs: list[tuple[str, ModelConfig, PretrainSettings]] = []
    for target in targets:
        if target == "student":
            jobs.append(("student", config.student, config.pretrain.student))
        else:
            jobs.append(("teacher", config.teacher(target), config.pretrain.teacher))
    results = []
    with _context([s for _, _, s in jobs], options) as ctx:
        for role, spec, settings in jobs:
            out_dir = layout.pretrain_out(role, spec.name)
            if _finished(out_dir, options):
                note(ctx, f"{out_dir}: already trained (final/ exists); skipping (use --force to retrain)")
                continue
            data = layout.pretrain_data(role, spec.name)
            gap = None if data.exists() else pretrain_data_gap(config)
            if gap:
                raise WsdmError(
                    f"no post-pretraining data ({gap}): nothing to pretrain; set prepare.ut_file to a ut "
                    "table and run prepare, or train without it: --set finetune.init_from_pretrain=false "
                    "--set distill.init_from_pretrain=false (wsdm-train all does this by itself)"
                )
            train, dev = pretrain_examples(data, settings, settings.seed)
            loaded = load_for_training(spec, config, ctx, None, settings.seed)
            loss = letter_lm_loss(loaded.letter_ids) if settings.loss == "letter_lm" else two_way_loss
            info = {"role": role, "model": spec.name}
            results.append(
                _train(
                    f"pretrain-{spec.name}", out_dir, settings, loaded, train, dev, loss, ctx, options, info
                )
            )
            del loaded
            _release()
    return results


def _pretrain_handoff(layout: Layout, role: str, name: str, settings: PretrainSettings) -> Path:
    path = layout.pretrain_out(role, name) / settings.handoff
    if not (path / "adapter_model.safetensors").exists():
        raise WsdmError(
            f"{path}: post-pretrained adapter not found; run `wsdm-train pretrain --target {'student' if role == 'student' else name}` "
            "first or set init_from_pretrain: false"
        )
    return path


def finetune(config: Config, teachers: list[str], folds: str, options: RunOptions) -> list[StageResult]:
    """Per-fold fine-tune of each teacher (2-way CE), starting from its post-pretrained adapter."""
    layout = Layout(config)
    settings = config.finetune
    results = []
    with _context([settings], options) as ctx:
        for name in teachers:
            spec = config.teacher(name)
            for fold in resolve_folds(folds, layout.folds(layout.processed / "teachers" / name)):
                out_dir = layout.teacher_out(name, fold)
                if _finished(out_dir, options):
                    note(
                        ctx, f"{out_dir}: already trained (final/ exists); skipping (use --force to retrain)"
                    )
                    continue
                train = fold_examples(layout.teacher_fold(name, fold, "train"))
                dev = fold_examples(layout.teacher_fold(name, fold, "dev"))
                init = (
                    _pretrain_handoff(layout, "teacher", name, config.pretrain.teacher)
                    if settings.init_from_pretrain
                    else None
                )
                loaded = load_for_training(spec, config, ctx, init, settings.seed)
                info = {"role": "teacher", "model": name, "fold": fold, "init": str(init) if init else None}
                results.append(
                    _train(
                        f"finetune-{name}-fold{fold}",
                        out_dir,
                        settings,
                        loaded,
                        train,
                        dev,
                        two_way_loss,
                        ctx,
                        options,
                        info,
                    )
                )
                del loaded
                _release()
    return results


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
                    written.append(out)
                    continue
                adapter = layout.teacher_out(name, fold) / "best"
                loaded = load_for_training(spec, config, ctx, adapter, 0, trainable=False)
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
                        progress=options.progress,
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
                written.append(out)
                del loaded
                _release()
    return written


def distill(config: Config, folds: str, options: RunOptions) -> list[StageResult]:
    """Per-fold student distillation from every configured teacher's fold logits."""
    layout = Layout(config)
    settings = config.distill
    if not config.teachers and not settings.teacher_predictions:
        raise WsdmError("distill needs teachers: configure teachers or distill.teacher_predictions")
    names = [t.name for t in config.teachers] or sorted(settings.teacher_predictions)
    results = []
    with _context([settings], options) as ctx:
        for fold in resolve_folds(folds, layout.folds(layout.processed / "student")):
            out_dir = layout.student_out(fold)
            if _finished(out_dir, options):
                note(ctx, f"{out_dir}: already trained (final/ exists); skipping (use --force to retrain)")
                continue
            sources = []
            for name in names:
                pattern = settings.teacher_predictions.get(name)
                sources.append(
                    (name, Path(pattern.format(fold=fold)) if pattern else layout.predictions(name, fold))
                )
            train, dropped = attach_teacher_logits(
                fold_examples(layout.student_fold(fold, "train")), sources, settings.missing_teacher_logits
            )
            if dropped:
                note(
                    ctx,
                    f"fold {fold}: {dropped} training row(s) without logits from every teacher were dropped",
                )
            dev = fold_examples(layout.student_fold(fold, "dev"))
            init = (
                _pretrain_handoff(layout, "student", config.student.name, config.pretrain.student)
                if settings.init_from_pretrain
                else None
            )
            loaded = load_for_training(config.student, config, ctx, init, settings.seed)
            info = {
                "role": "student",
                "fold": fold,
                "teachers": names,
                "dropped_rows": dropped,
                "init": str(init) if init else None,
            }
            loss = distillation_loss(settings.temperature, settings.mode)
            results.append(
                _train(f"distill-fold{fold}", out_dir, settings, loaded, train, dev, loss, ctx, options, info)
            )
            del loaded
            _release()
    return results
