"""`wsdm-train prepare`: the command over :func:`wsdm_train.data.prepare.run_prepare`."""

from __future__ import annotations

import click

from wsdm_serve.errors import user_errors

from .options import config_options, load


@click.command()
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
    from ..data.prepare import run_prepare

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
