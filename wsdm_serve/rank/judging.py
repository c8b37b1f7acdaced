"""The one door between ``rank`` and the judge: pairs in, P(first wins) in both orders out.

Pairs arrive as arena rows (``id``, ``prompt``, ``response_a``, ``response_b``) and are judged
exactly as ``wsdm-serve predict --tta all`` judges a table: the same text normalisation,
truncation, prompt and engines (:class:`~wsdm_serve.judge.Judge`), both orders.

In this process the engine is started at the first chunk, sized for the longest prompt truncation
lets through (``Judge.start``, as ``predict --work-dir`` sizes it, since later chunks are not known
yet), and it is never started when every pair is already in the work folder. With ``--ray`` the
pairs go through ``predict --ray``'s job (``jobs.ray_job``) as one Parquet table, and its work
folder keeps a killed run's finished units.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..judge import Judge
from ..predict import PredictResult
from ..settings import JudgeSettings
from .pairs import JUDGED_COLUMNS


def rank_settings(settings: JudgeSettings) -> JudgeSettings:
    """rank always judges both orders; the rows of a chunk are never timed against a budget."""
    return replace(settings, tta="all", time_budget_minutes=None)


def judge_identity(settings: JudgeSettings, ray: bool = False) -> dict:
    """The model folder's identity and every setting that changes a score (``jobs.identity``), minus
    the chunking: a judgement of a pair does not depend on the chunk it was judged in beyond the last
    digits, which a resumed run may keep. ``settings`` are a judge's (the engine resolved); on Ray
    the cluster picks the engine: ``ray`` stands for it."""
    from ..jobs.identity import model_identity, score_settings

    engine = replace(settings.engine, name="ray") if ray else settings.engine
    values = score_settings(rank_settings(settings).with_engine(engine), 0)
    values.pop("chunk_rows")
    values.pop("time_budget_minutes")
    return {"model": model_identity(settings.model), "settings": values}


def open_judge(settings: JudgeSettings, ray: bool = False) -> PairJudge | None:
    """Check the model folder before anything is written: a judge for this process, or (``ray``) the
    checks the Ray job's driver makes, and no judge here."""
    if not ray:
        return PairJudge(settings)
    from ..models.checks import preflight

    preflight(settings.model, settings.trust_remote_code)
    return None


def result_frame(ids, result: PredictResult) -> pd.DataFrame:
    """:data:`pairs.JUDGED_COLUMNS` from a prediction with both orders of every row."""
    swapped = result.p_a_swapped
    if np.isnan(swapped).any():
        raise RuntimeError("the judge left some pairs unscored in the swapped order")
    return pd.DataFrame(
        {
            "key": list(ids),
            "p_a_forward": result.p_a_forward,
            "p_a_swapped": swapped,
            "n_tokens": result.row_tokens if len(result.row_tokens) else np.zeros(len(ids), np.int64),
        }
    )[list(JUDGED_COLUMNS)]


class PairJudge:
    """Judges chunks of pairs in this process (see module doc); a context manager.

    The model folder, its tokenizer and the engine options are checked when it is made; ``engine``,
    when given, is used instead of one built from the settings and stays open (benchmarks).
    """

    def __init__(self, settings: JudgeSettings, engine=None) -> None:
        self.judge = Judge(rank_settings(settings), engine)

    def __call__(self, rows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        """(judgements of ``rows``, tokens scored in both orders)."""
        self.judge.start()  # sized for any admissible prompt: later chunks are not known yet
        result = self.judge.predict(rows[["id", "prompt", "response_a", "response_b"]])
        return result_frame(rows["id"], result), result.n_tokens

    def describe(self) -> str:
        return self.judge.engine.describe() if self.judge.engine is not None else "no engine started"

    def close(self) -> None:
        self.judge.close()

    def __enter__(self) -> PairJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def judge_on_ray(
    settings: JudgeSettings,
    rows: pd.DataFrame,
    *,
    address: str | None,
    folder: Path | None,
    chunk_rows: int,
    quiet: bool,
) -> tuple[pd.DataFrame, int]:
    """Judge ``rows`` with ``predict --ray``'s job; ``folder`` (in the rank work folder) keeps the
    pairs table and the job's work folder, so a killed run resumes its finished units."""
    from ..jobs.ray_job import run_ray_job
    from ..outputs import write_frame

    digest = hashlib.sha256("\n".join(rows["id"]).encode()).hexdigest()[:16]
    scratch = Path(tempfile.mkdtemp(prefix="wsdm-rank-")) if folder is None else folder / f"ray-{digest}"
    source = scratch / "pairs.parquet"
    try:
        if not source.is_file():
            write_frame(rows, source)
        job = run_ray_job(
            str(source), replace(rank_settings(settings), progress=not quiet), address=address,
            work_dir=None if folder is None else scratch / "job", restart=False, chunk_rows=chunk_rows,
            started_at=time.time(), quiet=quiet,
        )  # fmt: skip
    except BaseException:
        if folder is None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise  # a work folder keeps the job's finished units for the next run
    shutil.rmtree(scratch, ignore_errors=True)
    ids = [i for shard_ids in job.ids for i in shard_ids]
    return result_frame(ids, job.result), job.result.n_tokens
