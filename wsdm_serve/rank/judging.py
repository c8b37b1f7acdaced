"""The one door between ``rank`` and the judge: pairs in, P(first wins) in both orders out.

Pairs arrive as arena rows (``id``, ``prompt``, ``response_a``, ``response_b``) and are judged
exactly as ``wsdm-serve predict --tta all`` judges a table: the same text normalisation
(``data.arena_rows_from_frame``), truncation, prompt and engines (``predict.Judge``), both orders.
In the swapped prompt response_a sits in slot B, so its probability there is the B column.

In this process the engine is started at the first chunk, sized for the longest prompt truncation
lets through (as ``predict --work-dir`` sizes it, since later chunks are not known yet), and it is
never started when every pair is already in the work folder. With ``--ray`` the pairs go through
``predict --ray``'s job (``jobs.ray_job``) as one Parquet table, and its work folder keeps a killed
run's finished units.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..predict import Judge, PredictConfig, PredictResult
from .pairs import JUDGED_COLUMNS


@dataclass(frozen=True)
class JudgeSettings:
    """Everything that decides a judgement: the predict configuration and the text normalisation."""

    config: PredictConfig
    normalization: str

    def __post_init__(self) -> None:
        # rank always judges both orders; the rows of a chunk are never timed against a budget.
        object.__setattr__(self, "config", replace(self.config, tta="all", time_budget_minutes=None))


def judge_identity(settings: JudgeSettings, ray: bool = False) -> dict:
    """The model folder's identity and every setting that changes a score (``jobs.identity``), minus
    the chunking: a judgement of a pair does not depend on the chunk it was judged in beyond the last
    digits, which a resumed run may keep. On Ray the cluster picks the engine: ``ray`` stands for it."""
    from ..engines.select import chosen_engine
    from ..jobs.identity import model_identity, score_settings

    config = settings.config
    engine = "ray" if ray else chosen_engine(config.engine)
    values = score_settings(config, engine, 0, settings.normalization)
    values.pop("chunk_rows")
    values.pop("time_budget_minutes")
    return {"model": model_identity(config.model), "settings": values}


def open_judge(settings: JudgeSettings, ray: bool = False) -> PairJudge | None:
    """Check the model folder before anything is written: a judge for this process, or (``ray``) the
    checks the Ray job's driver makes, and no judge here."""
    if not ray:
        return PairJudge(settings)
    from ..checkmodel import preflight

    preflight(settings.config.model, settings.config.trust_remote_code)
    return None


def result_frame(ids, result: PredictResult) -> pd.DataFrame:
    """:data:`pairs.JUDGED_COLUMNS` from a prediction with both orders of every row."""
    swapped = np.full(len(ids), np.nan)
    swapped[result.rescored] = result.swapped[:, 1]
    if np.isnan(swapped).any():
        raise RuntimeError("the judge left some pairs unscored in the swapped order")
    return pd.DataFrame(
        {
            "key": list(ids),
            "p_a_forward": result.forward[:, 0],
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
        self.settings = settings
        self.judge = Judge(settings.config, engine)
        self._own_engine = engine is None

    def __call__(self, rows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        """(judgements of ``rows``, tokens scored in both orders)."""
        from ..data import arena_rows_from_frame

        if self.judge.engine is None:
            self.judge.engine = self._start_engine()
        arena = arena_rows_from_frame(rows, "pairs to judge", self.settings.normalization)
        result = self.judge.predict(arena)
        return result_frame(rows["id"], result), result.n_tokens

    def _start_engine(self):
        from ..engines.select import create_engine
        from ..jobs.local import prompt_length_bound

        config = self.settings.config
        longest = prompt_length_bound(self.judge.tokenizer, config.truncation)
        return create_engine(
            config.model, self.judge.letters, longest, config.engine, config.trust_remote_code
        )

    def describe(self) -> str:
        return self.judge.engine.describe() if self.judge.engine is not None else "no engine started"

    def close(self) -> None:
        if self._own_engine and self.judge.engine is not None:
            self.judge.engine.close()
        self.judge.engine = None

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
            str(source), replace(settings.config, progress=not quiet), address=address,
            work_dir=None if folder is None else scratch / "job", restart=False, chunk_rows=chunk_rows,
            normalization=settings.normalization, started_at=time.time(), quiet=quiet,
        )  # fmt: skip
    except BaseException:
        if folder is None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise  # a work folder keeps the job's finished units for the next run
    shutil.rmtree(scratch, ignore_errors=True)
    ids = [i for shard_ids in job.ids for i in shard_ids]
    return result_frame(ids, job.result), job.result.n_tokens
