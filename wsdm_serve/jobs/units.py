"""Units of a job, how one unit is scored, and the job's two phases.

Phase 1 scores every unit's rows as given (and, under ``--tta all``, swapped in the same task, so
the prompts are built once). Then the TTA count is fixed, from the time spent over all attempts,
and kept in the work folder: a resumed run re-scores exactly the rows the first one chose. Phase 2
scores the chosen rows swapped, unit by unit. Scoring goes through ``wsdm_serve.predict``
(``score_prompts``, ``score_swapped``), prompting through ``wsdm_serve.preprocess``: a unit is
scored as ``predict`` scores a table of those rows, in the same engine calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
from tqdm.auto import tqdm

from ..data import ArenaRows
from ..predict import PredictResult, score_prompts, score_swapped
from ..preprocess import PromptSet, build_prompts
from ..settings import JudgeSettings
from ..tta import TTAPlan, combine_swapped, least_confident
from .workdir import WorkDir

EMPTY_ROWS = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Unit:
    """Rows ``start:stop`` of input shard ``shard``; ``offset`` is its first row's job-wide index."""

    index: int
    shard: int
    start: int
    stop: int
    offset: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Task:
    """Score ``unit``: as given when ``forward``, and swapped for ``swapped`` (rows of the unit)."""

    unit: Unit
    forward: bool
    swapped: np.ndarray


@dataclass
class UnitScores:
    """Probabilities of one task, in float64 as ``predict`` computes them."""

    unit: int
    forward: np.ndarray | None
    n_tokens: np.ndarray | None
    swapped_rows: np.ndarray
    swapped: np.ndarray
    swapped_tokens: np.ndarray

    @property
    def tokens(self) -> int:
        forward = 0 if self.n_tokens is None else int(self.n_tokens.sum())
        return forward + int(self.swapped_tokens.sum())


Executor = Callable[[list[Task]], Iterable[UnitScores]]
"""Runs tasks (in this process, or on a cluster) and yields each one's scores as it finishes."""


def plan_units(shard_rows: Sequence[int], chunk_rows: int) -> list[Unit]:
    """Consecutive units of at most ``chunk_rows`` rows; a unit never spans two shards."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    units: list[Unit] = []
    offset = 0
    for shard, rows in enumerate(shard_rows):
        for start in range(0, rows, chunk_rows):
            stop = min(start + chunk_rows, rows)
            units.append(Unit(len(units), shard, start, stop, offset))
            offset += stop - start
    return units


def take_rows(rows: ArenaRows, index: Sequence[int]) -> ArenaRows:
    """The rows at ``index``, in that order (prompting is per row, so a subset prompts identically)."""
    return ArenaRows(
        ids=[rows.ids[i] for i in index],
        prompts=[rows.prompts[i] for i in index],
        responses_a=[rows.responses_a[i] for i in index],
        responses_b=[rows.responses_b[i] for i in index],
        null_text_cells=0,
    )


def prompt_task(rows: ArenaRows, task: Task, tokenizer, truncation) -> PromptSet:
    """The prompts a task scores (``rows`` are its unit's rows): every row for a forward task, only
    the chosen rows (swapped) otherwise. Runs wherever the rows are: here, or in a CPU task."""
    if task.forward:
        both = len(task.swapped) == len(rows)
        if len(task.swapped) and not both:
            raise ValueError("a forward task re-scores all of its rows swapped or none")
        return build_prompts(rows, tokenizer, truncation, with_swapped_ids=both, progress=False)
    subset = take_rows(rows, task.swapped)
    return build_prompts(subset, tokenizer, truncation, with_swapped_ids=True, progress=False)


def score_prompted(task: Task, prompts: PromptSet, engine, settings: JudgeSettings) -> UnitScores:
    """Score a task's prompts on a running engine, as ``predict`` scores a table of those rows."""
    swapped_rows = np.asarray(task.swapped, dtype=np.int64)
    if task.forward:
        rows = placeholder_rows(len(prompts))
        unit_settings = replace(settings, progress=False, tta="all" if swapped_rows.size else "none")
        result = score_prompts(rows, [prompts], engine, unit_settings, time.time())
        swapped_tokens = [len(prompts.swapped_token_ids[i]) for i in result.rescored]
        return UnitScores(
            task.unit.index,
            result.forward,
            result.row_tokens,
            np.asarray(result.rescored, dtype=np.int64),
            result.swapped.reshape(-1, 2),
            np.asarray(swapped_tokens, dtype=np.int64),
        )
    swapped = score_swapped(engine, prompts, np.arange(len(prompts)), False)
    tokens = np.asarray([len(ids) for ids in prompts.swapped_token_ids], dtype=np.int64)
    return UnitScores(task.unit.index, None, None, swapped_rows, swapped, tokens)


def placeholder_rows(n: int) -> ArenaRows:
    """Rows that only count: scoring prompts already built needs their number, not their text."""
    return ArenaRows(ids=list(range(n)), prompts=[], responses_a=[], responses_b=[], null_text_cells=0)


@dataclass
class JobScores:
    forward: np.ndarray
    row_tokens: np.ndarray
    rescored: np.ndarray
    swapped: np.ndarray
    tokens: int


def _bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="row", disable=not enabled, dynamic_ncols=True)


def _run(tasks: list[Task], execute: Executor, store: WorkDir, desc: str, progress: bool) -> None:
    rows = {task.unit.index: task.unit.size if task.forward else len(task.swapped) for task in tasks}
    started, tokens = time.perf_counter(), 0
    with _bar(sum(rows.values()), desc, progress) as bar:
        for scores in execute(tasks):
            store.save(scores)
            tokens += scores.tokens
            bar.set_postfix_str(
                f"{tokens / max(time.perf_counter() - started, 1e-9):,.0f} tok/s", refresh=False
            )
            bar.update(rows[scores.unit])


def run_phases(units: list[Unit], store: WorkDir, execute: Executor, settings: JudgeSettings) -> JobScores:
    """Everything not yet in ``store``: phase 1, the TTA count (once per job), phase 2."""
    n_rows = sum(unit.size for unit in units)
    every = {unit.index: np.arange(unit.size) for unit in units}
    pending = [u for u in units if u.index not in store.forward]
    if pending:
        store.start_forward()
        tasks = [Task(u, True, every[u.index] if settings.tta == "all" else EMPTY_ROWS) for u in pending]
        _run(tasks, execute, store, "score", settings.progress)
        store.finish_forward()
    forward = np.concatenate([store.forward[u.index][0] for u in units])
    row_tokens = np.concatenate([store.forward[u.index][1] for u in units])
    count = store.state["tta_count"]
    if count is None:
        plan = TTAPlan(settings.tta, settings.time_budget_minutes)
        count = plan.count(n_rows, store.spent_seconds() / 60, store.forward_seconds() / 60)
        store.set_tta_count(count)
    rescored = np.sort(least_confident(forward, count))
    chosen = _rows_per_unit(units, rescored)
    tasks = [
        Task(u, False, chosen[u.index])
        for u in units
        if chosen[u.index].size and u.index not in store.swapped
    ]
    if tasks:
        _run(tasks, execute, store, "tta", settings.progress)
    swapped = np.zeros((len(rescored), 2))
    tokens = int(row_tokens.sum())
    at = 0
    for unit in units:
        rows = chosen[unit.index]
        if not rows.size:
            continue
        probs, saved_rows, saved_tokens = store.swapped[unit.index]
        if not np.array_equal(saved_rows, rows):
            raise RuntimeError(f"unit {unit.index}: the swapped rows on disk are not the ones TTA chose")
        swapped[at : at + len(rows)] = probs
        tokens += int(saved_tokens.sum())
        at += len(rows)
    return JobScores(forward, row_tokens, rescored, swapped, tokens)


def _rows_per_unit(units: list[Unit], rescored: np.ndarray) -> dict[int, np.ndarray]:
    """The chosen (sorted, job-wide) rows split by unit, as rows of each unit."""
    result = {}
    for unit in units:
        lo, hi = np.searchsorted(rescored, [unit.offset, unit.offset + unit.size])
        result[unit.index] = (rescored[lo:hi] - unit.offset).astype(np.int64)
    return result


def job_result(ids: list, scores: JobScores, seconds: float, engine: str) -> PredictResult:
    """What ``predict`` returns, so outputs and reports take a job's result as they take predict's."""
    return PredictResult(
        ids=list(ids),
        forward=scores.forward,
        probs=combine_swapped(scores.forward, scores.swapped, scores.rescored),
        rescored=scores.rescored,
        swapped=scores.swapped,
        n_tokens=scores.tokens,
        seconds=seconds,
        engine=engine,
        row_tokens=scores.row_tokens,
    )


def in_process(
    rows_of: Callable[[Unit], ArenaRows], engine_of: Callable[[], object], tokenizer, settings: JudgeSettings
) -> Executor:
    """An executor that scores task after task here; the engine is started by the first task only,
    so a finished job re-writes its outputs without loading a model. The next task's prompts are
    built in a thread while the engine scores the current one (the tokenizer releases the GIL), so
    the GPU does not wait for prompting between units."""
    from concurrent.futures import ThreadPoolExecutor

    def prompts_of(task: Task) -> PromptSet:
        return prompt_task(rows_of(task.unit), task, tokenizer, settings.truncation)

    def execute(tasks: list[Task]) -> Iterator[UnitScores]:
        if not tasks:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsdm-prompts") as pool:
            ahead = pool.submit(prompts_of, tasks[0])
            for number, task in enumerate(tasks):
                prompts = ahead.result()
                if number + 1 < len(tasks):
                    ahead = pool.submit(prompts_of, tasks[number + 1])
                yield score_prompted(task, prompts, engine_of(), settings)

    return execute
