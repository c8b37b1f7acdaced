"""A job in this process: ``predict`` and ``evaluate`` with ``--work-dir``.

The table is read and checked as ``predict`` reads it; the job then scores unit by unit on the
engine ``predict`` would start, saving each unit as it finishes. The engine is sized for the longest
prompt truncation allows (units are prompted one at a time, so the actual longest is not known
before it starts), and it is started only when some unit is left: re-running a finished job
re-writes its outputs in a second.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..data import ArenaRows
from ..judge import Judge
from ..predict import PredictResult
from ..settings import JudgeSettings
from . import DEFAULT_CHUNK_ROWS
from .identity import model_identity, score_settings
from .units import Unit, in_process, job_result, plan_units, run_phases, take_rows
from .workdir import WorkDir


def job_manifest(kind: str, inputs: dict, settings: JudgeSettings, chunk_rows: int) -> dict:
    """What the work folder records; ``settings`` have their engine resolved."""
    return {
        "kind": kind,
        "input": inputs,
        "model": model_identity(settings.model),
        "settings": score_settings(settings, chunk_rows),
    }


def run_local_job(
    rows: ArenaRows,
    settings: JudgeSettings,
    work_dir: Path,
    *,
    inputs: dict,
    kind: str = "predict",
    restart: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    started_at: float | None = None,
) -> PredictResult:
    """Score ``rows`` as ``run_predict`` does, keeping finished units in ``work_dir``.

    ``inputs`` identifies the rows (the input file's hash and whatever selected them), ``kind``
    tells predict from evaluate (evaluate forces ``--tta all``), so neither reuses the other's folder.
    """
    started_at = time.time() if started_at is None else started_at
    # The judge checks options, model config and tokenizer and decides the engine before anything
    # is written; its engine starts only when some unit is left, sized for any admissible prompt.
    with Judge(settings) as judge:
        manifest = job_manifest(kind, inputs, judge.settings, chunk_rows)
        units = plan_units([len(rows)], chunk_rows)

        def rows_of(unit: Unit) -> ArenaRows:
            return take_rows(rows, range(unit.start, unit.stop))

        with WorkDir(work_dir, manifest, restart=restart, started_at=started_at) as store:
            execute = in_process(rows_of, judge.start, judge.tokenizer, judge.settings)
            scores = run_phases(units, store, execute, judge.settings)
            described = (
                judge.engine.describe()
                if judge.engine is not None
                else f"{judge.settings.engine.name}: nothing left to score"
            )
            return job_result(rows.ids, scores, store.spent_seconds(), described)
