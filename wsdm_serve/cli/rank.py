"""`wsdm-serve rank ANSWERS`: a leaderboard of models from their answers (Bradley-Terry, bootstrap
intervals), or `--judgements FILE` to draw it again from stored judgements or people's votes."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import WsdmError, user_errors
from .jobs import job_options
from .options import judge_options

DEFAULT_RANK_DIR = Path("sub/rank")
FORMATS = ("table", "alpaca-eval", "arena-hard")
PAIRINGS = ("baseline", "all", "budget")


@click.command("rank")
@click.argument("answers", type=click.Path(path_type=Path), required=False)
@click.option(
    "--judgements",
    "judgements_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Draw the board from this file instead of ANSWERS, without a model: a judgements.parquet "
    "rank wrote, or votes (model_a, model_b, winner = model_a/model_b/tie).",
)
@click.option(
    "--format",
    "answers_format",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="ANSWERS is a table (question_id, prompt, model, response[, language, category]), a folder of "
    "AlpacaEval model_outputs.json files, or an Arena-Hard-Auto folder (model_answer/<model>.jsonl).",
)
@click.option(
    "--baseline",
    default=None,
    help="Model scored 1000 and the win rates are against; with --pairs baseline every model is judged "
    "against it [default: none, the mean scores 1000].",
)
@click.option(
    "--pairs",
    type=click.Choice(PAIRINGS),
    default=None,
    help="baseline: every model against --baseline on every question; all: every pair of models; "
    "budget: the most informative pairs first, --max-judgements in all [default: baseline with "
    "--baseline, else all].",
)
@click.option(
    "--max-judgements",
    type=click.IntRange(min=1),
    default=None,
    help="--pairs budget: how many pairs to judge (each in both orders).",
)
@click.option(
    "--outcomes",
    type=click.Choice(["soft", "hard"]),
    default="soft",
    show_default=True,
    help="soft: the judge's probability is the outcome; hard: its decision, a tie (half to each) "
    "within --tie-margin of 0.5.",
)
@click.option(
    "--tie-margin",
    type=click.FloatRange(min=0, max=0.5, max_open=True),
    default=0.0,
    show_default=True,
    help="--outcomes hard: a probability this close to 0.5 is a tie.",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=0),
    default=500,
    show_default=True,
    help="Resamples of the questions for the 95%% intervals (0: no intervals).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap and the budget schedule."
)
@click.option(
    "--style-control",
    type=click.Choice(["none", "length"]),
    default="none",
    show_default=True,
    help="length: answer length (characters) as a covariate, as Arena-Hard does, so length alone earns "
    "no score.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_RANK_DIR,
    show_default=True,
    help="Folder for leaderboard.csv, leaderboard.json, leaderboard.png and judgements.parquet.",
)
@judge_options(model="Model folder of the judge (not used with --judgements).")
@job_options(ray=True)
@click.pass_context
@user_errors
def rank(
    ctx, answers, judgements_file, answers_format, baseline, pairs, max_judgements, outcomes,
    tie_margin, bootstrap, seed, style_control, out, settings, job,
) -> None:  # fmt: skip
    """Rank the models of ANSWERS by judging their answers in pairs (both orders) and fitting
    Bradley-Terry scores on the Elo scale, with bootstrap intervals over questions.

    Writes leaderboard.csv, leaderboard.json (settings, boards per language and category),
    leaderboard.png and judgements.parquet to --out, and the board as a markdown table to stdout.
    """
    from ..rank.boards import BoardSettings

    quiet = ctx.obj["quiet"]
    pairing = _pairing(answers, judgements_file, baseline, pairs, max_judgements, outcomes, tie_margin, job)
    board = BoardSettings(baseline, outcomes, tie_margin, bootstrap, seed, style_control)
    _check_out(out, job.work_dir)
    recorded = {
        "outcomes": outcomes, "tie_margin": tie_margin, "bootstrap": bootstrap, "seed": seed,
        "style_control": style_control, "baseline": baseline,
    }  # fmt: skip
    if judgements_file is not None:
        from ..rank.judgements import load_judgements

        frame = load_judgements(judgements_file, style_control=style_control)
        _check_baseline(
            baseline, set(frame["model_a"].astype(str)) | set(frame["model_b"].astype(str)), judgements_file
        )
        _finish(out, frame, board, {**recorded, "judgements": str(judgements_file)}, None, quiet, what="")
        return
    from dataclasses import replace

    from ..rank.answers import load_answers
    from ..rank.run import answer_lengths, rank_answers

    loaded = load_answers(answers, answers_format)
    _check_baseline(baseline, set(loaded.models), answers)
    frame, stats = rank_answers(
        loaded, pairing, board, replace(settings, progress=False), work_dir=job.work_dir,
        restart=job.restart, chunk_rows=job.chunk_rows, ray_address=job.ray_address if job.ray else None,
        ray=job.ray, seed=seed, quiet=quiet,
    )  # fmt: skip
    recorded.update(
        answers=str(answers), format=answers_format, model=str(settings.model), pairs=pairing.pairs,
        max_judgements=pairing.max_judgements, token_budget=settings.truncation.token_budget,
        response_word_cap=settings.truncation.response_word_cap,
        text_normalization=settings.text_normalization, engine=stats.engine,
    )  # fmt: skip
    summary = f"{len(loaded.models)} models, {loaded.n_questions} questions, {stats.summary()}"
    _finish(out, frame, board, recorded, answer_lengths(loaded), quiet, what=summary)


def _pairing(answers, judgements_file, baseline, pairs, max_judgements, outcomes, tie_margin, job):
    from ..rank.run import Pairing

    if (answers is None) == (judgements_file is None):
        raise click.UsageError("give ANSWERS to judge, or --judgements FILE to draw the board from")
    if tie_margin and outcomes != "hard":
        raise click.UsageError("--tie-margin needs --outcomes hard")
    if judgements_file is not None:
        if pairs is not None or max_judgements is not None or job.active:
            raise click.UsageError(
                "--judgements draws the board only: no --pairs, --max-judgements, --work-dir or --ray"
            )
        return None
    pairs = pairs or ("baseline" if baseline else "all")
    if pairs == "baseline" and baseline is None:
        raise click.UsageError("--pairs baseline needs --baseline MODEL")
    if (pairs == "budget") != (max_judgements is not None):
        raise click.UsageError("--pairs budget and --max-judgements go together")
    return Pairing(pairs, max_judgements)


def _check_baseline(baseline: str | None, models: set[str], source) -> None:
    if baseline is not None and baseline not in models:
        listed = ", ".join(sorted(models)[:8]) + (" ..." if len(models) > 8 else "")
        raise WsdmError(f"--baseline {baseline}: no such model in {source} (models: {listed})")


def _check_out(out: Path, work_dir: Path | None) -> None:
    from ..jobs.workdir import ensure_not_inside
    from ..outputs import check_writable
    from ..rank.report import FILES

    if out.exists() and not out.is_dir():
        raise WsdmError(f"{out}: --out is a folder, this is a file")
    paths = [out / name for name in FILES.values()]
    check_writable(*paths)
    ensure_not_inside(work_dir, *paths)


def _finish(out: Path, frame, board, settings: dict, lengths, quiet: bool, what: str) -> None:
    """Boards, files, the table on stdout and a summary line on stderr."""
    from tqdm.auto import tqdm

    from ..rank.boards import draw_boards
    from ..rank.report import markdown_table, write_outputs

    with tqdm(total=board.resamples, desc="bootstrap", unit="fit", disable=quiet, dynamic_ncols=True) as bar:
        boards = draw_boards(frame, board, avg_length=lengths, progress=bar.update)
    written = write_outputs(
        out, boards, frame if "p_a" in frame.columns else None, settings, board.style_control
    )
    click.echo(markdown_table(boards.overall, boards.avg_length))
    groups = sum(len(by_value) for by_value in boards.groups.values())
    extra = f"; {groups} boards per language/category in leaderboard.json" if groups else ""
    skipped = f", {len(boards.skipped)} groups skipped" if boards.skipped else ""
    dropped = boards.overall.dropped_resamples
    if dropped:
        click.echo(
            f"rank: {dropped} of {boards.overall.resamples} resamples had no finite scores (a model won or "
            "lost all its drawn comparisons) and were left out of the intervals",
            err=True,
        )
    head = f"rank: {what} -> " if what else "rank: "
    click.echo(f"{head}{out}{extra}{skipped} ({', '.join(Path(p).name for p in written.values())})", err=True)
