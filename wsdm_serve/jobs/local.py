"""A job in this process: ``predict`` and ``evaluate`` with ``--work-dir``.

The table is read and checked as ``predict`` reads it; the job then scores unit by unit on the
engine ``predict`` would start, saving each unit as it finishes. The engine is sized for the longest
prompt truncation allows (units are prompted one at a time, so the actual longest is not known
before it starts), and it is started only when some unit is left: re-running a finished job
re-writes its outputs in a second.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ..data import ArenaRows
from ..engines.select import chosen_engine, create_engine
from ..predict import Judge, PredictConfig, PredictResult
from . import DEFAULT_CHUNK_ROWS
from .identity import model_identity, score_settings
from .units import Unit, in_process, job_result, plan_units, run_phases, take_rows
from .workdir import WorkDir

PROMPT_SLACK_TOKENS = 64
"""Tokens a truncated prompt may exceed the budget by: re-encoding cut text can merge or split a few
tokens at each cut. A prompt beyond the bound is a one-line error of the engine, never a wrong score."""


def prompt_length_bound(tokenizer, truncation) -> int:
    """The longest prompt truncation lets through: template + query and responses + slack."""
    from ..prompt import JudgePrompt
    from ..truncation import encode_texts

    template = len(encode_texts(tokenizer, [JudgePrompt(tokenizer).render("", "", "")])[0])
    return template + max(truncation.token_budget, truncation.query_token_cap) + PROMPT_SLACK_TOKENS


def job_manifest(
    kind: str, inputs: dict, config: PredictConfig, engine: str, chunk_rows: int, normalization: str
) -> dict:
    return {
        "kind": kind,
        "input": inputs,
        "model": model_identity(config.model),
        "settings": score_settings(config, engine, chunk_rows, normalization),
    }


def run_local_job(
    rows: ArenaRows,
    config: PredictConfig,
    work_dir: Path,
    *,
    inputs: dict,
    normalization: str,
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
    judge = Judge(config)  # checks options, model config and tokenizer before anything is written
    engine_name = chosen_engine(config.engine)
    manifest = job_manifest(kind, inputs, config, engine_name, chunk_rows, normalization)
    units = plan_units([len(rows)], chunk_rows)
    state: dict = {}

    def engine_of():
        if "engine" not in state:
            longest = prompt_length_bound(judge.tokenizer, config.truncation)
            state["engine"] = create_engine(
                config.model, judge.letters, longest, config.engine, config.trust_remote_code
            )
        return state["engine"]

    def rows_of(unit: Unit) -> ArenaRows:
        return take_rows(rows, range(unit.start, unit.stop))

    try:
        with WorkDir(work_dir, manifest, restart=restart, started_at=started_at) as store:
            execute = in_process(rows_of, engine_of, judge.tokenizer, config)
            scores = run_phases(units, store, execute, config)
            described = (
                state["engine"].describe() if "engine" in state else f"{engine_name}: nothing left to score"
            )
            return job_result(rows.ids, scores, store.spent_seconds(), described)
    finally:
        if "engine" in state:
            state["engine"].close()


def evaluate_config(config: PredictConfig) -> PredictConfig:
    """evaluate scores every row in both orders."""
    return replace(config, tta="all")
