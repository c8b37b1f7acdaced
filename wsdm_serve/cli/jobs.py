"""`predict` and `evaluate` as long jobs: `--work-dir` (resume), `--ray` (a cluster).

The commands stay in ``cli/__init__``; they hand over here when one of these options is given, so
a plain run is exactly what it was.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import click

from ..errors import WsdmError
from ..jobs import DEFAULT_CHUNK_ROWS

log = logging.getLogger(__name__)

LARGE_TABLE_ROWS = 20000
"""Above this a plain run takes hours on the competition's GPUs: it says how to make it resumable."""


@dataclass(frozen=True)
class JobOptions:
    work_dir: Path | None = None
    restart: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    ray: bool = False
    ray_address: str | None = None

    @property
    def active(self) -> bool:
        return self.ray or self.work_dir is not None


def job_options(ray: bool):
    """``--work-dir``, ``--restart``, ``--chunk-rows`` (and ``--ray``, ``--ray-address`` for predict),
    collected into one ``job`` argument."""

    def decorate(command):
        target = command

        @functools.wraps(target)
        def collect(*args, **kwargs):
            values = {name: kwargs.pop(name) for name in ("work_dir", "restart", "chunk_rows")}
            if ray:
                values.update(ray=kwargs.pop("ray"), ray_address=kwargs.pop("ray_address"))
            job = JobOptions(**values)
            if job.restart and job.work_dir is None:
                raise click.UsageError("--restart needs --work-dir")
            if job.ray_address and not job.ray:
                raise click.UsageError("--ray-address needs --ray")
            return target(*args, job=job, **kwargs)

        command = collect
        if ray:
            command = click.option(
                "--ray-address",
                default=None,
                help="Ray cluster to join, e.g. auto or ray://head:10001 [default: start one on this machine].",
            )(command)
            command = click.option(
                "--ray",
                is_flag=True,
                help="Run on a Ray cluster: PATH may be a folder, glob or URI of Parquet shards.",
            )(command)
        command = click.option(
            "--chunk-rows",
            type=click.IntRange(min=1),
            default=DEFAULT_CHUNK_ROWS,
            show_default=True,
            help="Rows scored and saved together (one unit of --work-dir and --ray).",
        )(command)
        command = click.option(
            "--restart", is_flag=True, help="Empty --work-dir first and score everything again."
        )(command)
        command = click.option(
            "--work-dir",
            type=click.Path(path_type=Path),
            default=None,
            help="Keep finished scores here; the same command run again resumes [default: none].",
        )(command)
        return command

    return decorate


def hint_work_dir(rows: int) -> None:
    if rows > LARGE_TABLE_ROWS:
        log.warning("%d rows: with --work-dir DIR an interrupted run resumes where it stopped", rows)


def input_identity(path: Path, **extra) -> dict:
    from ..jobs.identity import file_sha256

    return {"sha256": file_sha256(path), **extra}


def predict_job(path, out: Path, probs: Path | None, settings, job: JobOptions, started_at, quiet):
    """`predict` with --work-dir and/or --ray: score, write the submission (or shard folder), summarise."""
    from ..jobs.workdir import ensure_not_inside
    from ..outputs import check_writable
    from ..predict import write_predictions

    if probs is not None and probs.suffix.lower() != ".parquet":
        raise WsdmError(f"{probs}: --probs writes parquet; give a .parquet path")
    folder = out.suffix.lower() != ".csv"
    if folder and not job.ray:
        raise WsdmError(f"{out}: --out writes CSV; give a .csv path (a folder of shards needs --ray)")
    ensure_not_inside(job.work_dir, out, probs)
    if folder:
        from ..jobs.output import check_shard_folder

        check_shard_folder(out)
        check_writable(probs)
    else:
        check_writable(out, probs)
    if job.ray:
        from ..jobs.ray_job import run_ray_job

        shards, ids, result = run_ray_job(
            str(path), settings, address=job.ray_address, work_dir=job.work_dir, restart=job.restart,
            chunk_rows=job.chunk_rows, started_at=started_at, quiet=quiet,
        )  # fmt: skip
    else:
        from ..data import load_arena_rows
        from ..jobs.local import run_local_job

        rows = load_arena_rows(path, settings.text_normalization)
        result = run_local_job(
            rows, settings, job.work_dir, inputs=input_identity(path),
            restart=job.restart, chunk_rows=job.chunk_rows, started_at=started_at,
        )  # fmt: skip
    if folder:
        from ..jobs.output import write_shard_folder

        write_shard_folder(result, shards, ids, out)
        write_predictions_probs_only(result, probs)
    else:
        write_predictions(result, out, probs)
    click.echo(f"predict: {result.summary()} -> {out}", err=True)


def write_predictions_probs_only(result, probs: Path | None) -> None:
    if probs is None:
        return
    import pandas as pd

    from ..outputs import write_frame

    write_frame(pd.DataFrame({"id": result.ids, "p_a": result.probs[:, 0], "p_b": result.probs[:, 1]}), probs)


def evaluate_predict(path: Path, limit: int | None, job: JobOptions):
    """The ``predict`` function evaluate scores with: a resumable job in ``job.work_dir``."""
    from ..jobs.local import run_local_job

    inputs = input_identity(path, limit=limit)

    def predict(rows, settings):
        return run_local_job(
            rows, settings, job.work_dir, inputs=inputs, kind="evaluate",
            restart=job.restart, chunk_rows=job.chunk_rows,
        )  # fmt: skip

    return predict
