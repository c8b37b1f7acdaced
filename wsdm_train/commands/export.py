"""`wsdm-train merge` and `wsdm-train quantize`: thin commands over merge.py and quantize.py.

Both read the configuration (``--config``/``--set``) like every other command. Their options that
name a configuration field (``--out`` is ``merge.out`` for merge, ``quantize.out`` for quantize) are
made from that field (type, choices, bounds, help) and applied after ``--set``; every other field is
reached with ``--set``. The work lives in :func:`wsdm_train.export.merge.merge_from_config` and
:func:`wsdm_train.export.quantize.quantize_from_config`, which `wsdm-train all` calls too.
"""

from __future__ import annotations

from pathlib import Path

import click

from wsdm_serve.errors import user_errors
from wsdm_serve.quiet import library_bars_hidden

from .field_options import FieldOptionsCommand
from .options import config_options, load, quiet_requested

# Option -> the configuration field it sets (metavar after the option name).
MERGE_FIELDS = {
    "--base DIR": "student.model",
    "--model-dir DIR": "paths.model_dir",
    "--mode": "merge.mode",
    "--out DIR": "merge.out",
    "--adapter-out DIR": "merge.adapter_out",
    "--tokenizer DIR": "student.tokenizer",
    "--dtype": "merge.dtype",
    "--max-shard-size SIZE": "merge.max_shard_size",
    "--trust-remote-code": "student.trust_remote_code",
}
QUANTIZE_FIELDS = {
    "--model DIR": "quantize.model",
    "--calibration FILE": "quantize.calibration",
    "--out DIR": "quantize.out",
    "--format": "quantize.format",
    "--calibration-samples N": "quantize.calibration_samples",
    "--seed N": "quantize.calibration_seed",
    "--max-calibration-tokens N": "quantize.max_calibration_tokens",
    "--bits": "quantize.bits",
    "--group-size N": "quantize.group_size",
    "--act-order": "quantize.act_order",
    "--dampening F": "quantize.dampening",
    "--dtype": "quantize.dtype",
    "--max-shard-size SIZE": "quantize.max_shard_size",
    "--trust-remote-code": "student.trust_remote_code",
}


@click.command(cls=FieldOptionsCommand, fields=MERGE_FIELDS)
@config_options
@click.option(
    "--adapter",
    "adapters",
    type=click.Path(path_type=Path),
    multiple=True,
    help="A fold's PEFT adapter folder; repeat once per fold "
    "[default: MODEL_DIR/student/fold{k}/<merge.adapter>, k < --folds].",
)
@click.option(
    "--folds",
    type=click.IntRange(min=1),
    default=None,
    help="Folds merged by default [default: prepare.n_folds].",
)
@click.option("--force", is_flag=True, help="Replace OUT even if it holds another merge.")
@user_errors
def merge(
    config_name: str,
    overrides: tuple[str, ...],
    field_overrides: list,
    adapters: tuple[Path, ...],
    folds: int | None,
    force: bool,
) -> None:
    """Combine the fold adapters and merge them into the base model.

    A re-run with the same adapters, base and settings does nothing.
    """
    quiet_requested(False)  # -q: the libraries' own bars hidden too (before they are imported)
    from ..export.merge import merge_from_config

    config = load(config_name, overrides, field_overrides)
    result = merge_from_config(config, adapters=list(adapters) or None, folds=folds, force=force)
    click.echo(f"merge: {result.summary()}", err=True)


@click.command(cls=FieldOptionsCommand, fields=QUANTIZE_FIELDS)
@config_options
@click.option("--force", is_flag=True, help="Replace OUT even if it holds another quantization.")
@user_errors
def quantize(config_name: str, overrides: tuple[str, ...], field_overrides: list, force: bool) -> None:
    """GPTQ-quantize the merged model (8-bit, group 128, symmetric, as the reference) and verify it.

    Needs llm-compressor (pip install 'wsdm[quantize]'), in an environment without vLLM.
    Runs on a GPU when one is visible, layer by layer; on CPU for small models.
    """
    quiet = quiet_requested(False)  # -q: the libraries' own bars hidden too (before they are imported)
    from ..export.quantize import quantize_from_config

    config = load(config_name, overrides, field_overrides)
    with library_bars_hidden(quiet):
        result = quantize_from_config(config, force=force)
    click.echo(f"quantize: {result.summary()}", err=True)
