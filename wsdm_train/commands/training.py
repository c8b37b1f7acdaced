"""`wsdm-train pretrain | finetune | teacher-predict | distill`.

Every command runs the same way on one CPU, one GPU or many: launched plainly it is one process;
launched by ``torchrun`` or the ``deepspeed`` launcher (``-m wsdm_train.cli ...``) every process
runs it and the trainer splits the work. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import logging
import sys

import click

from wsdm_serve.errors import user_errors

from .options import config_options, load, quiet_requested, run_options, scoring_run_options


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.ERROR if quiet else logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("transformers", "huggingface_hub", "httpx", "peft", "DeepSpeed", "deepspeed", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def stage_options(command):
    command = click.option("--force", is_flag=True, help="Redo work whose output already exists.")(command)
    return config_options(run_options(command))


def scoring_options(command):
    command = click.option("--force", is_flag=True, help="Recompute prediction files that exist.")(command)
    return config_options(scoring_run_options(command))


def _options(deepspeed: str, device: str, resume: bool, force: bool, quiet: bool):
    from ..training.stages import RunOptions

    return RunOptions(deepspeed=deepspeed, device=device, resume=resume, progress=not quiet, force=force)


def _teacher_names(config, choice: str) -> list[str]:
    from wsdm_serve.errors import WsdmError

    if choice == "all":
        if not config.teachers:
            raise WsdmError("no teachers configured")
        return [t.name for t in config.teachers]
    names = [part for part in choice.split(",") if part]
    for name in names:
        config.teacher(name)
    return names


def _report(results) -> None:
    for result in results:
        click.echo(
            f"{result.out_dir}: {result.steps} steps, best dev acc {result.best_acc:.4f} "
            f"at step {result.best_step}"
            + (f" (resumed at step {result.resumed_from})" if result.resumed_from else "")
        )


@click.command()
@stage_options
@click.option(
    "--target",
    default="all",
    show_default=True,
    help="student, a teacher name, a comma list, teachers, or all.",
)
@user_errors
def pretrain(config_name, overrides, deepspeed, device, resume, quiet, force, target):
    """Post-pretrain the student and/or the teachers on the extra preference rows."""
    quiet = quiet_requested(quiet)
    setup_logging(quiet)
    from ..training.stages import pretrain as run

    config = load(config_name, overrides)
    if target == "all":
        targets = ["student", *[t.name for t in config.teachers]]
    elif target == "teachers":
        targets = _teacher_names(config, "all")
    else:
        targets = [part for part in target.split(",") if part]
        for name in targets:
            if name != "student":
                config.teacher(name)
    _report(run(config, targets, _options(deepspeed, device, resume, force, quiet)))


@click.command()
@stage_options
@click.option("--teacher", default="all", show_default=True, help="Teacher name, comma list, or all.")
@click.option("--fold", default="all", show_default=True, help="Fold number, comma list, or all.")
@user_errors
def finetune(config_name, overrides, deepspeed, device, resume, quiet, force, teacher, fold):
    """Fine-tune each teacher per fold (starts from its post-pretrained adapter)."""
    quiet = quiet_requested(quiet)
    setup_logging(quiet)
    from ..training.stages import finetune as run

    config = load(config_name, overrides)
    options = _options(deepspeed, device, resume, force, quiet)
    _report(run(config, _teacher_names(config, teacher), fold, options))


@click.command("teacher-predict")
@scoring_options
@click.option("--teacher", default="all", show_default=True, help="Teacher name, comma list, or all.")
@click.option("--fold", default="all", show_default=True, help="Fold number, comma list, or all.")
@user_errors
def teacher_predict(config_name, overrides, device, quiet, force, teacher, fold):
    """Write each fold teacher's A/B logits for the rows the student trains on (Parquet)."""
    quiet = quiet_requested(quiet)
    setup_logging(quiet)
    from ..training.stages import teacher_predict as run

    config = load(config_name, overrides)
    options = _options("none", device, True, force, quiet)
    for path in run(config, _teacher_names(config, teacher), fold, options):
        click.echo(str(path))


@click.command()
@stage_options
@click.option("--fold", default="all", show_default=True, help="Fold number, comma list, or all.")
@user_errors
def distill(config_name, overrides, deepspeed, device, resume, quiet, force, fold):
    """Distil the student per fold from the teachers' logits."""
    quiet = quiet_requested(quiet)
    setup_logging(quiet)
    from ..training.stages import distill as run

    config = load(config_name, overrides)
    _report(run(config, fold, _options(deepspeed, device, resume, force, quiet)))
