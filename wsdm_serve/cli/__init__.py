"""`wsdm-serve`: predict, render and the other commands a user of the judge needs.

Heavy libraries are imported inside commands so `wsdm-serve --help` is instant.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from .. import __version__
from ..errors import EXIT_USAGE, WsdmError, user_errors
from ..tta import TTA_MODES
from .jobs import evaluate_predict, hint_work_dir, job_options, predict_job
from .options import DEFAULT_MODEL, DEFAULT_SUBMISSION, judge_options, setup_logging

STARTED_AT = time.time()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsdm-serve")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bars or warnings; errors and the summary only."
)
@click.pass_context
def main(ctx: click.Context, quiet: bool) -> None:
    """Judge chatbot responses in pairs: which of two responses would the user prefer?"""
    setup_logging(quiet)
    ctx.obj = {"quiet": quiet}


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_SUBMISSION,
    show_default=True,
    help="Submission CSV with columns id,winner.",
)
@click.option(
    "--probs",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write id, p_a, p_b to this parquet file.",
)
@click.option(
    "--tta",
    type=click.Choice(TTA_MODES),
    default="budget",
    show_default=True,
    help="Swap test-time augmentation: none, all rows, or the least confident rows that fit the budget.",
)
@click.option(
    "--time-budget",
    type=click.FloatRange(min=0),
    default=None,
    help="Minutes for the whole job with --tta budget [default: the reference's rule from the row count].",
)
@judge_options()
@job_options(ray=True)
@click.pass_context
@user_errors
def predict(ctx, path, out, probs, settings, job) -> None:
    """Predict the winner of every row of PATH (parquet, csv or jsonl) and write a submission."""
    from ..data import load_arena_rows
    from ..judge import run_predict
    from ..outputs import check_writable
    from ..predict import write_predictions

    if job.active:
        predict_job(path, out, probs, settings, job, STARTED_AT, ctx.obj["quiet"])
        return
    if probs is not None and probs.suffix.lower() != ".parquet":
        raise WsdmError(f"{probs}: --probs writes parquet; give a .parquet path")
    if out.suffix.lower() != ".csv":
        raise WsdmError(f"{out}: --out writes CSV; give a .csv path")
    check_writable(out, probs)
    rows = load_arena_rows(path, settings.text_normalization)
    hint_work_dir(len(rows))
    result = run_predict(rows, settings, STARTED_AT)
    write_predictions(result, out, probs)
    click.echo(f"predict: {result.summary()} -> {out}", err=True)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Output table, .parquet or .csv: id, text, text_swapped, n_tokens.",
)
@judge_options(model="Model folder; only its tokenizer and chat template are used.", engine=False)
@click.pass_context
@user_errors
def render(ctx, path, out, settings) -> None:
    """Write the exact prompts the model will see for every row of PATH."""
    import pandas as pd

    from ..data import load_arena_rows
    from ..outputs import check_writable, write_frame
    from ..preprocess import build_prompts
    from ..tokenizer import load_tokenizer

    if out.suffix.lower() not in (".parquet", ".csv"):
        raise WsdmError(f"{out}: unsupported output type {out.suffix or '(none)'}; use .parquet or .csv")
    check_writable(out)
    rows = load_arena_rows(path, settings.text_normalization)
    tokenizer = load_tokenizer(settings.model, settings.trust_remote_code)
    prompts = build_prompts(
        rows, tokenizer, settings.truncation, with_swapped_ids=False, progress=settings.progress
    )
    frame = pd.DataFrame(
        {
            "id": rows.ids,
            "text": prompts.texts,
            "text_swapped": prompts.swapped_texts,
            "n_tokens": prompts.n_tokens,
        }
    )
    write_frame(frame, out)
    click.echo(f"render: {len(frame)} rows, {int(prompts.n_tokens.sum()):,} tokens -> {out}", err=True)


DEFAULT_EVAL_DIR = Path("sub/eval")


@main.command("download-final-model")
@click.option(
    "--source",
    default=None,
    help="Kaggle handle (owner/model/framework/variation[/version]), Hugging Face repo id (owner/name), "
    "kaggle.com or huggingface.co URL, local model folder, or .zip/.tar.gz/.tgz/.tar archive "
    "[default: the released judge on Kaggle].",
)
@click.option(
    "--dest",
    type=click.Path(path_type=Path),
    default=DEFAULT_MODEL,
    show_default=True,
    help="Where the model folder is installed.",
)
@click.option(
    "--force", is_flag=True, help="Replace an existing --dest (only after the new copy passes its checks)."
)
@click.option(
    "--trust-remote-code",
    is_flag=True,
    default=False,
    help="Allow code shipped inside the model folder to run while checking it.",
)
@click.pass_context
@user_errors
def download_final_model(ctx, source, dest, force, trust_remote_code) -> None:
    """Fetch the released judge (or --source), check it, and install it as --dest.

    The download goes to a hidden folder next to --dest and is renamed into place only after
    the checks pass, so an interrupted or broken download never leaves a half-written model.
    """
    from ..download import DEFAULT_SOURCE, ModelRejected, download_final_model

    try:
        report = download_final_model(
            source or DEFAULT_SOURCE,
            dest,
            force=force,
            progress=not ctx.obj["quiet"],
            trust_remote_code=trust_remote_code,
        )
    except ModelRejected as exc:
        click.echo(exc.report.format())
        raise
    click.echo(report.format())
    click.echo(f"download-final-model: installed {source or DEFAULT_SOURCE} -> {dest}", err=True)


@main.command("check-model")
@click.argument("path", type=click.Path(path_type=Path), default=DEFAULT_MODEL, required=False)
@click.option(
    "--smoke",
    is_flag=True,
    help="Also load the model on the chosen engine and score one row in both orders.",
)
@judge_options(model=None, truncation=False, normalization=False, model_parameter="path")
@click.pass_context
@user_errors
def check_model_command(ctx, path, smoke, settings) -> None:
    """Check a model folder: config, quantization, weights, tokenizer, answer letters.

    Prints what was found and one line per problem; exits with code 2 when there are problems.
    """
    from ..models.checks import check_model
    from .smoke import smoke_test

    report = check_model(path, trust_remote_code=settings.trust_remote_code)
    if smoke and report.ok:
        smoke_test(report, settings)
    elif smoke:
        report.fact("smoke test", "skipped: fix the problems below first")
    click.echo(report.format())
    if not report.ok:
        sys.exit(EXIT_USAGE)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--probs",
    "probs_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Evaluate these probabilities instead of running a model: parquet/csv with id, p_a, p_b "
    "[, p_a_swapped, p_b_swapped][, n_tokens] (what --save-probs writes).",
)
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_EVAL_DIR,
    show_default=True,
    help="Folder for the PNG plots (calibration.png, accuracy_by_length.png).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Metrics as JSON [default: OUT_DIR/metrics.json].",
)
@click.option(
    "--save-probs",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the probabilities (forward and swapped) to this .parquet, for a later --probs.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N rows of PATH.")
@click.option(
    "--length-edges",
    default="512,1024,2048,4096",
    show_default=True,
    help="Token counts that split the prompt-length buckets.",
)
@click.option(
    "--bins",
    type=click.IntRange(min=2),
    default=10,
    show_default=True,
    help="Equal-width bins for ECE and the curve.",
)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@judge_options(model="Model folder that scores the rows (not used with --probs).")
@job_options(ray=False)
@click.pass_context
@user_errors
def evaluate(
    ctx, path, probs_file, out_dir, json_path, save_probs, limit, length_edges, bins, no_plots, settings, job
) -> None:
    """Score a labelled table (winner, or winner_model_a/b/tie) and report how good the judge is.

    Every row is scored in both orders, so the report has the judge without TTA, with TTA, and
    its position bias. Ties are counted and left out. Table on stdout, JSON and PNGs on disk.
    """
    from .. import evaluate as ev
    from ..jobs.workdir import ensure_not_inside
    from ..outputs import check_writable, write_frame

    try:
        edges = sorted({int(e) for e in length_edges.split(",") if e.strip()})
    except ValueError:
        raise WsdmError(f"--length-edges {length_edges!r}: expected comma-separated integers") from None
    if any(e <= 0 for e in edges):
        raise WsdmError(f"--length-edges {length_edges!r}: token counts must be positive")
    if save_probs is not None and save_probs.suffix.lower() != ".parquet":
        raise WsdmError(f"{save_probs}: --save-probs writes parquet; give a .parquet path")
    json_path = json_path or out_dir / "metrics.json"
    check_writable(json_path, save_probs, None if no_plots else out_dir / "calibration.png")
    ensure_not_inside(job.work_dir, json_path, save_probs, out_dir / "calibration.png")
    table = ev.load_labelled(path, limit)
    if probs_file is not None:
        scored = ev.scored_from_probs(table, probs_file, path)
    else:
        predict = None if job.work_dir is None else evaluate_predict(path, limit, job)
        scored = ev.scored_from_model(table, path, settings, predict)
    report = ev.evaluate_scored(scored, edges, bins)
    report = {
        "table": str(path),
        "model": None if probs_file is not None else str(settings.model),
        "probs": None if probs_file is None else str(probs_file),
        "rows_read": table.rows_read,
        "ties_excluded": table.ties,
        **report,
        "plots": {},
    }
    if save_probs is not None:
        write_frame(ev.probs_frame(scored), save_probs)
    if not no_plots:
        from ..plots import plot_accuracy_by_length, plot_calibration

        report["plots"]["calibration"] = str(plot_calibration(report, out_dir / "calibration.png"))
        if report["by_length"]:
            report["plots"]["accuracy_by_length"] = str(
                plot_accuracy_by_length(report, out_dir / "accuracy_by_length.png")
            )
    ev.write_json(report, json_path)
    what = f"probabilities {probs_file}" if probs_file is not None else f"model {settings.model}"
    click.echo(
        f"evaluate: {path}, {table.rows_read} rows read, {table.ties} ties excluded, "
        f"{len(scored.labels)} evaluated with {what}"
    )
    click.echo(ev.format_report(report))
    written = [str(json_path), *report["plots"].values(), *([str(save_probs)] if save_probs else [])]
    click.echo(f"evaluate: wrote {', '.join(written)}", err=True)


from .convert import convert  # noqa: E402
from .rank import rank  # noqa: E402
from .serve import serve  # noqa: E402

main.add_command(convert)
main.add_command(serve)
main.add_command(rank)

if __name__ == "__main__":
    main()
