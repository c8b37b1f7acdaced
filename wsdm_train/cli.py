"""`wsdm-train`: the stages that reproduce the released model.

Every stage reads one configuration: a preset (`reference`, `tiny`) or a YAML file, plus
`--set section.field=value` overrides. Heavy libraries are imported inside commands so
`wsdm-train --help` is instant.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from wsdm_serve import __version__
from wsdm_serve.errors import user_errors

from .options import config_options, load, pipeline_run_options, quiet_requested


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsdm-train")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or notes; errors and the summary only.")
@click.pass_context
def main(ctx: click.Context, quiet: bool) -> None:
    """Reproduce the training of the released judge, stage by stage."""
    logging.basicConfig(
        level=logging.ERROR if quiet else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("transformers", "huggingface_hub", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    ctx.obj = {"quiet": quiet}


@main.command()
@config_options
@click.option("--force", is_flag=True, help="Rebuild even when the manifest says the data is up to date.")
@click.pass_context
@user_errors
def prepare(ctx, config_name, overrides, force) -> None:
    """Folds, per-fold train/dev sets and post-pretraining sets for the student and every teacher.

    Reads paths.data_dir/{train.parquet, notie_lmsys.csv, ut_multi.csv} (names from the prepare
    section) and writes Parquet files and a manifest under paths.processed_dir. A re-run with the
    same inputs, tokenizers and settings does nothing.
    """
    from .data.prepare import run_prepare

    quiet = ctx.obj["quiet"]
    config = load(config_name, overrides)
    result = run_prepare(
        config,
        config_source=config_name,
        force=force,
        progress=not quiet,
        echo=(lambda message: None) if quiet else (lambda message: click.echo(message, err=True)),
    )
    click.echo(result.summary, err=True)


STAGE_NAMES = ["prepare", "pretrain", "finetune", "teacher-predict", "distill", "merge", "quantize"]


@main.command("all")
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
    from .pipeline.run import PipelineOptions, run_pipeline
    from .stage_commands import setup_logging

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


# Training stages (pretrain, finetune, teacher-predict, distill).
from .stage_commands import add_stage_commands  # noqa: E402

add_stage_commands(main)

# Merging the fold adapters and quantizing the merged model.
from .model_commands import add_model_commands  # noqa: E402

add_model_commands(main)

if __name__ == "__main__":
    main()
