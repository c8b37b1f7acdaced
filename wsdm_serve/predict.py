"""The prediction pipeline: table -> prompts -> length-sorted scoring -> swap TTA -> probabilities.

Knows nothing about CUDA (engines do) and nothing about file formats of outputs (the CLI does).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .checkmodel import preflight
from .data import ArenaRows
from .engines.base import ScoringEngine
from .engines.select import EngineOptions, check_options, create_engine
from .preprocess import PromptSet, build_prompts
from .prompt import letter_token_ids
from .truncation import INFERENCE_TRUNCATION, TruncationConfig
from .tta import TTAMode, TTAPlan, combine_swapped, least_confident, softmax2

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
    engine: ScoringEngine, sequences: list[list[int]], desc: str, enabled: bool
) -> np.ndarray:
    """Run the engine under a progress bar that shows rows/s and tokens/s."""
    started = time.perf_counter()
    tokens_done = 0
    with tqdm(total=len(sequences), desc=desc, unit="row", disable=not enabled, dynamic_ncols=True) as bar:

        def progress(rows: int, tokens: int) -> None:
            nonlocal tokens_done
            tokens_done += tokens
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{tokens_done / elapsed:,.0f} tok/s", refresh=False)
            bar.update(rows)

        return engine.score(sequences, progress)


def run_predict(
    rows: ArenaRows,
    config: PredictConfig,
    started_at: float | None = None,
    engine: ScoringEngine | None = None,
) -> PredictResult:
    """Score every row, then re-score the least confident ones swapped as the time budget allows.

    ``started_at`` (a ``time.time()`` stamp) is when the job began: the reference's time budget
    counts everything since the start, loading included. ``engine``, when given, is used instead of
    one built from ``config.engine`` and stays open (benchmarks time passes without engine start-up).
    """
    started_at = time.time() if started_at is None else started_at
    if engine is None:
        check_options(config.engine)
    # Config, tokenizer and answer letters are checked before minutes of loading weights.
    tokenizer = preflight(config.model, config.trust_remote_code)
    letters = letter_token_ids(tokenizer)
    prompts: PromptSet = build_prompts(
        rows, tokenizer, config.truncation, with_swapped_ids=config.tta != "none", progress=config.progress
    )
    owned = engine is None
    if engine is None:
        engine = create_engine(
            config.model, letters, prompts.longest, config.engine, config.trust_remote_code
        )
    with engine if owned else contextlib.nullcontext(engine):
        forward_started = time.time()
        forward_logits = score_with_progress(engine, prompts.token_ids, "score", config.progress)
        forward_minutes = (time.time() - forward_started) / 60
        forward = softmax2(forward_logits)
        plan = TTAPlan(config.tta, config.time_budget_minutes)
        count = plan.count(len(rows), (time.time() - started_at) / 60, forward_minutes)
        rescored = np.sort(least_confident(forward, count))
        swapped = np.zeros((0, 2))
        probs = forward
        n_tokens = int(prompts.n_tokens.sum())
        if count:
            assert prompts.swapped_token_ids is not None
            sequences = [prompts.swapped_token_ids[i] for i in rescored]
            swapped = softmax2(score_with_progress(engine, sequences, "tta", config.progress))
            probs = combine_swapped(forward, swapped, rescored)
            n_tokens += sum(len(s) for s in sequences)
        engine_name = engine.describe()
    return PredictResult(
        ids=list(rows.ids),
        forward=forward,
        probs=probs,
        rescored=rescored,
        swapped=swapped,
        n_tokens=n_tokens,
        seconds=time.time() - started_at,
        engine=engine_name,
        row_tokens=prompts.n_tokens.copy(),
    )
