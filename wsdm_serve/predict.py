"""The prediction pipeline: table -> prompts -> scoring -> swap TTA -> probabilities.

Knows nothing about CUDA (engines do) and nothing about file formats of outputs (the CLI does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .data import ArenaRows
from .engines.base import ScoringEngine
from .engines.select import EngineOptions, check_options, create_engine
from .models.checks import preflight
from .outputs import write_frame
from .preprocess import STREAM_CHUNK_ROWS, PromptSet, build_prompts, iter_prompt_chunks
from .prompt import letter_token_ids
from .truncation import INFERENCE_TRUNCATION, TruncationConfig
from .tta import TTAMode, TTAPlan, combine_swapped, least_confident, softmax2, winners

log = logging.getLogger(__name__)


@dataclass
class PredictConfig:
    model: Path
    tta: TTAMode = "budget"
    time_budget_minutes: float | None = None
    truncation: TruncationConfig = INFERENCE_TRUNCATION
    engine: EngineOptions = field(default_factory=EngineOptions)
    trust_remote_code: bool = False
    progress: bool = True
    precision: str | None = None
    """``checkpoint`` or ``fp8`` (see docs/precision.md); a shorthand for ``engine.precision``."""

    def __post_init__(self) -> None:
        if self.precision is None:
            self.precision = self.engine.precision
        elif self.engine.precision in ("checkpoint", self.precision):
            self.engine = replace(self.engine, precision=self.precision)
        else:
            raise ValueError(
                f"PredictConfig: precision {self.precision!r} and engine.precision {self.engine.precision!r} differ"
            )


@dataclass
class PredictResult:
    """Probabilities in input order; ``forward`` is before TTA, ``probs`` after.

    ``swapped[k]`` belongs to row ``rescored[k]``; ``row_tokens`` is each row's forward prompt length.
    """

    ids: list
    forward: np.ndarray
    probs: np.ndarray
    rescored: np.ndarray
    swapped: np.ndarray
    n_tokens: int
    seconds: float
    engine: str
    row_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def summary(self) -> str:
        return (
            f"{len(self.ids)} rows, {self.n_tokens:,} tokens, {self.seconds:.1f} s, "
            f"{len(self.rescored)} rows re-scored by TTA (engine {self.engine})"
        )


def score_with_progress(
    engine: ScoringEngine,
    chunks: Iterable[Sequence[Sequence[int]]],
    total: int,
    desc: str,
    enabled: bool,
) -> np.ndarray:
    """Run the engine over ``total`` sequences handed over in chunks, under a progress bar that
    shows rows/s and tokens/s."""
    started = time.perf_counter()
    tokens_done = 0
    with tqdm(total=total, desc=desc, unit="row", disable=not enabled, dynamic_ncols=True) as bar:

        def progress(rows: int, tokens: int) -> None:
            nonlocal tokens_done
            tokens_done += tokens
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{tokens_done / elapsed:,.0f} tok/s", refresh=False)
            bar.update(rows)

        return engine.score_stream(chunks, progress)


class Judge:
    """A checked model with its tokenizer loaded, ready to judge one table after another.

    Checking the model folder and loading its tokenizer cost about a second, starting an engine
    minutes; a caller with several tables (or a benchmark timing passes) pays that once, and each
    :meth:`predict` does only per-row work: truncation, prompts, scoring, TTA. The engine is started
    by the first :meth:`predict`, sized for that table's longest prompt, unless one is handed in;
    a judge closes only an engine it started.
    """

    def __init__(self, config: PredictConfig, engine: ScoringEngine | None = None) -> None:
        if engine is None:
            check_options(config.engine, config.model)
        self.config = config
        # Config, tokenizer and answer letters are checked before minutes of loading weights.
        self.tokenizer = preflight(config.model, config.trust_remote_code)
        self.letters = letter_token_ids(self.tokenizer)
        self.engine = engine
        self._owns_engine = engine is None

    def prompts(self, rows: ArenaRows, with_swapped_ids: bool | None = None) -> PromptSet:
        """Every row's prompts; swapped ids when TTA may need them, unless ``with_swapped_ids`` says."""
        config = self.config
        return build_prompts(
            rows,
            self.tokenizer,
            config.truncation,
            with_swapped_ids=config.tta != "none" if with_swapped_ids is None else with_swapped_ids,
            progress=config.progress,
        )

    def prompt_chunks(self, rows: ArenaRows) -> Iterator[PromptSet]:
        """The same prompts, yielded a chunk at a time for an engine that is already running."""
        return iter_prompt_chunks(
            rows,
            self.tokenizer,
            self.config.truncation,
            with_swapped_ids=self.config.tta != "none",
            chunk_rows=STREAM_CHUNK_ROWS,
        )

    def predict(self, rows: ArenaRows, started_at: float | None = None) -> PredictResult:
        """Score every row, then re-score the least confident ones swapped as the time budget allows.

        ``started_at`` (a ``time.time()`` stamp) is when the job began: the reference's time budget
        counts everything since the start, loading included. A new engine is sized for the table's
        longest prompt, so the first table is prompted in full before it starts; once an engine is
        running, prompts stream into it while later rows are still being tokenized.
        """
        started_at = time.time() if started_at is None else started_at
        if self.engine is not None:
            return score_prompts(rows, self.prompt_chunks(rows), self.engine, self.config, started_at)
        prompts = self.prompts(rows)
        self.engine = create_engine(
            self.config.model,
            self.letters,
            prompts.longest,
            self.config.engine,
            self.config.trust_remote_code,
        )
        return score_prompts(rows, [prompts], self.engine, self.config, started_at)

    def close(self) -> None:
        if self._owns_engine and self.engine is not None:
            self.engine.close()
            self.engine = None

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def score_prompts(
    rows: ArenaRows,
    prompt_chunks: Iterable[PromptSet],
    engine: ScoringEngine,
    config: PredictConfig,
    started_at: float,
) -> PredictResult:
    """Forward pass over every prompt, then the swapped order for as many rows as TTA allows.

    ``prompt_chunks`` are consecutive chunks of the rows' prompts; the engine may start on the
    first before the next is built.
    """
    built: list[PromptSet] = []

    def forward_ids() -> Iterator[list[list[int]]]:
        for chunk in prompt_chunks:
            built.append(chunk)
            yield chunk.token_ids

    forward_started = time.time()
    forward_logits = score_with_progress(engine, forward_ids(), len(rows), "score", config.progress)
    forward_minutes = (time.time() - forward_started) / 60
    prompts = PromptSet.concat(built)
    if len(prompts) != len(rows):
        raise RuntimeError(f"the engine scored {len(prompts)} prompts for {len(rows)} rows")
    forward = softmax2(forward_logits)
    plan = TTAPlan(config.tta, config.time_budget_minutes)
    count = plan.count(len(rows), (time.time() - started_at) / 60, forward_minutes)
    rescored = np.sort(least_confident(forward, count))
    swapped = np.zeros((0, 2))
    probs = forward
    n_tokens = int(prompts.n_tokens.sum())
    if count:
        swapped = score_swapped(engine, prompts, rescored, config.progress)
        probs = combine_swapped(forward, swapped, rescored)
        n_tokens += sum(len(prompts.swapped_token_ids[i]) for i in rescored)
    return PredictResult(
        ids=list(rows.ids),
        forward=forward,
        probs=probs,
        rescored=rescored,
        swapped=swapped,
        n_tokens=n_tokens,
        seconds=time.time() - started_at,
        engine=engine.describe(),
        row_tokens=prompts.n_tokens.copy(),
    )


def score_swapped(engine: ScoringEngine, prompts: PromptSet, rows: np.ndarray, progress: bool) -> np.ndarray:
    """P(A), P(B) of the swapped prompts of ``rows`` (indices into ``prompts``), in that order, scored
    as one engine call: TTA's second pass, here and in jobs that score a table in parts."""
    assert prompts.swapped_token_ids is not None
    sequences = [prompts.swapped_token_ids[i] for i in rows]
    return softmax2(score_with_progress(engine, [sequences], len(sequences), "tta", progress))


def run_predict(
    rows: ArenaRows,
    config: PredictConfig,
    started_at: float | None = None,
    engine: ScoringEngine | None = None,
) -> PredictResult:
    """One table, start to finish: check the model, build prompts, start the engine, score.

    ``engine``, when given, is used instead of one built from ``config.engine`` and stays open.
    """
    started_at = time.time() if started_at is None else started_at
    with Judge(config, engine) as judge:
        return judge.predict(rows, started_at)


def write_predictions(result: PredictResult, out: Path, probs_path: Path | None = None) -> None:
    """The submission (``id,winner``) and, if asked, the probabilities; each file written atomically."""
    import pandas as pd

    if probs_path is not None:
        write_frame(
            pd.DataFrame({"id": result.ids, "p_a": result.probs[:, 0], "p_b": result.probs[:, 1]}),
            probs_path,
        )
    write_frame(pd.DataFrame({"id": result.ids, "winner": winners(result.probs)}), out)
