"""`wsdm-train all`: the command over :func:`wsdm_train.pipeline.run_pipeline`."""

from __future__ import annotations

from pathlib import Path

import click

from wsdm_serve.errors import user_errors

from .options import config_options, load, pipeline_run_options, quiet_requested

STAGE_NAMES = ["prepare", "pretrain", "finetune", "teacher-predict", "distill", "merge", "quantize"]


@click.command("all")
@config_options
@pipeline_run_options
@click.option(
    "--teacher-predictions",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder with TEACHER/fold{k}/predictions.parquet for every teacher (the reference's fast "
    "train path): the teachers are then neither prepared nor trained.",
)
@click.option(
    "--from",
    "redo_from",
    type=click.Choice(STAGE_NAMES),
    default=None,
    help="Redo this stage and every later one even if finished (earlier ones run only if needed).",
)
@click.option(
    "--until",
    type=click.Choice(STAGE_NAMES),
    default=None,
    help="Stop after this stage [default: run through quantize].",
)
@click.option("--force", is_flag=True, help="Redo every stage, even finished ones (as --from prepare).")
@user_errors
def all_stages(
    config_name, overrides, deepspeed, device, quiet, teacher_predictions, redo_from, until, force
):
    """Every stage in order, prepare to quantize; finished stages are skipped, an interrupted run resumes.

    Progress lines go to stderr; the last line on stdout is the finished model folder, which
    `wsdm-serve predict --model` and `wsdm-serve check-model` accept. The record of finished
    stages is paths.model_dir/pipeline.json.
    """
    from ..pipeline import PipelineOptions, run_pipeline
    from .training import setup_logging

    quiet = quiet_requested(quiet)
    setup_logging(quiet)
    config = load(config_name, overrides)
    options = PipelineOptions(
        until=until,
        redo_from=redo_from,
        force=force,
        teacher_predictions=teacher_predictions,
        deepspeed=deepspeed,
        device=device,
        progress=not quiet,
    )
    result = run_pipeline(config, options, config_source=config_name)
    if result.stopped_after:
        click.echo(f"all: stopped after {result.stopped_after} (--until)", err=True)
    if result.output is not None:
        click.echo(f"all: finished; model folder: {result.output}", err=True)
        click.echo(str(result.output))
