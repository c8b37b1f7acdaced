"""`wsdm-train`: the stages that reproduce the released model.

Every stage reads one configuration: a preset (`reference`, `tiny`) or a YAML file, plus
`--set section.field=value` overrides. Heavy libraries are imported inside commands so
`wsdm-train --help` is instant.
"""

from __future__ import annotations

import logging
import sys

import click

from wsdm_serve import __version__
from wsdm_serve.cli import user_errors

from .options import config_options, load


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
    from .prepare import run_prepare

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


# Training stages (pretrain, finetune, teacher-predict, distill).
from .stage_commands import add_stage_commands  # noqa: E402

add_stage_commands(main)

# Merging the fold adapters and quantizing the merged model.
from .model_commands import add_model_commands  # noqa: E402

add_model_commands(main)

if __name__ == "__main__":
    main()
