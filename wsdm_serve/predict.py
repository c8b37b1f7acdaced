"""The prediction pipeline: prompts -> scoring -> swap TTA -> probabilities.

Knows nothing about CUDA (engines do); the judge (``judge.py``) owns the model, its tokenizer and
the engine and calls this for every table, as the work folders and the Ray path do for every unit.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .data import ArenaRows
from .engines.base import ScoringEngine
from .outputs import write_frame
from .preprocess import PromptSet
from .settings import JudgeSettings
from .tta import TTAPlan, combine_swapped, least_confident, softmax2, winners


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

    @property
    def p_a_forward(self) -> np.ndarray:
        """P(response_a wins) from the prompt as given, per row."""
        return self.forward[:, 0]

    @property
    def p_a_swapped(self) -> np.ndarray:
        """P(response_a wins) from the swapped prompt, per row; NaN where the row was not re-scored.

        In the swapped prompt response_a sits in slot B, so its probability is the B column."""
        swapped = np.full(len(self.ids), np.nan)
        swapped[self.rescored] = self.swapped[:, 1]
        return swapped

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


def score_prompts(
    rows: ArenaRows,
    prompt_chunks: Iterable[PromptSet],
    engine: ScoringEngine,
    settings: JudgeSettings,
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
    forward_logits = score_with_progress(engine, forward_ids(), len(rows), "score", settings.progress)
    forward_minutes = (time.time() - forward_started) / 60
    prompts = PromptSet.concat(built)
    if len(prompts) != len(rows):
        raise RuntimeError(f"the engine scored {len(prompts)} prompts for {len(rows)} rows")
    forward = softmax2(forward_logits)
    plan = TTAPlan(settings.tta, settings.time_budget_minutes)
    count = plan.count(len(rows), (time.time() - started_at) / 60, forward_minutes)
    rescored = np.sort(least_confident(forward, count))
    swapped = np.zeros((0, 2))
    probs = forward
    n_tokens = int(prompts.n_tokens.sum())
    if count:
        swapped = score_swapped(engine, prompts, rescored, settings.progress)
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


def write_predictions(result: PredictResult, out: Path, probs_path: Path | None = None) -> None:
    """The submission (``id,winner``) and, if asked, the probabilities; each file written atomically."""
    import pandas as pd

    if probs_path is not None:
        write_frame(
            pd.DataFrame({"id": result.ids, "p_a": result.probs[:, 0], "p_b": result.probs[:, 1]}),
            probs_path,
        )
    write_frame(pd.DataFrame({"id": result.ids, "winner": winners(result.probs)}), out)
