"""One ``rank`` run: schedule the pairs, judge the ones not judged yet, chunk by chunk.

The schedule comes from ``compare``: the baseline or all pairs on every question (question-major,
so a question's pairs reach the engine together), or the adaptive rounds of ``--pairs budget``.
Pairs already in the work folder are read back; the rest are judged in chunks of ``--chunk-rows``
pairs, each saved as it finishes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..compare import BudgetPlanner, all_pairs, baseline_pairs, on_every_question
from ..settings import JudgeSettings
from .answers import Answers
from .boards import BoardSettings, comparisons_of
from .judging import PairJudge, judge_identity, judge_on_ray, open_judge
from .pairs import arena_rows, judgements_frame, pair_table
from .store import JudgementStore

PAIRINGS: tuple[str, ...] = ("baseline", "all", "budget")


@dataclass(frozen=True)
class Pairing:
    """Which pairs (``--pairs``): ``baseline`` / ``all`` on every question, or ``budget`` rounds of at
    most ``max_judgements`` in all."""

    pairs: str
    max_judgements: int | None = None


@dataclass
class JudgingStats:
    scheduled: int = 0
    judged: int = 0
    """Pairs judged by this run (the others were in the work folder, or repeated in the schedule)."""
    tokens: int = 0
    seconds: float = 0.0
    engine: str = "nothing to judge"
    rounds: int = 0

    def summary(self) -> str:
        rate = f", {self.tokens / self.seconds:,.0f} tok/s" if self.seconds > 0 and self.tokens else ""
        return (
            f"{self.scheduled} judgements, {self.judged} pairs judged now in both orders "
            f"({self.tokens:,} tokens, {self.seconds:.1f} s{rate}; {self.engine})"
        )


@dataclass
class RayOptions:
    address: str | None = None


@dataclass
class Judging:
    """Judges what the store lacks: here a chunk of ``chunk_rows`` pairs at a time, each saved as it
    finishes; on Ray (``ray`` given) all of them as one job of units of ``chunk_rows`` pairs, whose
    own work folder keeps finished units (a job per chunk would start the cluster's engines again
    for every chunk)."""

    settings: JudgeSettings
    store: JudgementStore
    judge: PairJudge | None
    chunk_rows: int
    quiet: bool
    ray: RayOptions | None = None
    stats: JudgingStats = field(default_factory=JudgingStats)

    def ensure(self, table: pd.DataFrame) -> None:
        missing = set(table["key"]) - self.store.known()
        if not missing:
            return
        rows = arena_rows(table, missing)
        started = time.perf_counter()
        if self.ray is not None:
            folder = None if self.store.path is None else self.store.folder
            judged, tokens = judge_on_ray(
                self.settings, rows, address=self.ray.address, folder=folder,
                chunk_rows=self.chunk_rows, quiet=self.quiet,
            )  # fmt: skip
            self._saved(judged, tokens, "ray")
        else:
            assert self.judge is not None
            with tqdm(
                total=len(rows), desc="judge", unit="pair", disable=self.quiet, dynamic_ncols=True
            ) as bar:
                for start in range(0, len(rows), self.chunk_rows):
                    chunk = rows.iloc[start : start + self.chunk_rows].reset_index(drop=True)
                    judged, tokens = self.judge(chunk)
                    self._saved(judged, tokens, self.judge.describe())
                    elapsed = time.perf_counter() - started
                    bar.set_postfix_str(f"{self.stats.tokens / max(elapsed, 1e-9):,.0f} tok/s", refresh=False)
                    bar.update(len(chunk))
        self.stats.seconds += time.perf_counter() - started

    def _saved(self, judged: pd.DataFrame, tokens: int, engine: str) -> None:
        self.store.add(judged)
        self.stats.judged += len(judged)
        self.stats.tokens += int(tokens)
        self.stats.engine = engine


def judge_answers(
    answers: Answers, pairing: Pairing, board: BoardSettings, judging: Judging, seed: int
) -> pd.DataFrame:
    """The judgements table of the schedule (see module doc), judging what is missing."""
    if pairing.pairs != "budget":
        if pairing.pairs == "baseline":
            pairs = baseline_pairs(len(answers.models), answers.models.index(board.baseline))
        else:
            pairs = all_pairs(len(answers.models))
        table = pair_table(answers, on_every_question(pairs, answers.n_questions))
        judging.ensure(table)
        judging.stats.scheduled = len(table)
        return judgements_frame(table, judging.store.judgements())
    assert pairing.max_judgements is not None
    planner = BudgetPlanner(len(answers.models), answers.n_questions, pairing.max_judgements, seed=seed)
    tables: list[pd.DataFrame] = []
    judged = None
    frame = None
    while len(batch := planner.next_round(judged)):
        table = pair_table(answers, batch)
        judging.ensure(table)
        tables.append(table)
        judging.stats.rounds += 1
        frame = judgements_frame(pd.concat(tables, ignore_index=True), judging.store.judgements())
        judged = comparisons_of(frame, board, answers.models)
    judging.stats.scheduled = planner.scheduled
    assert frame is not None
    return frame


def rank_answers(
    answers: Answers,
    pairing: Pairing,
    board: BoardSettings,
    settings: JudgeSettings,
    *,
    work_dir: Path | None,
    restart: bool,
    chunk_rows: int,
    ray: bool,
    ray_address: str | None,
    seed: int,
    quiet: bool,
) -> tuple[pd.DataFrame, JudgingStats]:
    """The judgements table of ``answers`` under ``pairing``, with the work folder (if any) opened
    for this judge; the model folder is checked before anything is written."""
    judge = open_judge(settings, ray=ray)
    try:
        judged_by = settings if judge is None else judge.judge.settings  # the engine decided once
        with JudgementStore(work_dir, judge_identity(judged_by, ray), restart=restart) as store:
            judging = Judging(
                settings, store, judge, chunk_rows, quiet, RayOptions(ray_address) if ray else None
            )
            return judge_answers(answers, pairing, board, judging, seed), judging.stats
    finally:
        if judge is not None:
            judge.close()


def answer_lengths(answers: Answers) -> dict[str, float]:
    """Mean answer length (characters) of each model over every question."""
    lengths = answers.lengths()
    return {model: float(np.mean(lengths[:, m])) for m, model in enumerate(answers.models)}
