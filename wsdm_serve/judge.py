"""The in-process judge: ``Judge.from_pretrained(model_dir, **settings).predict(pairs)``.

One judge checks its model folder, loads the tokenizer and decides its engine once; each
:meth:`Judge.predict` does only the per-row work (truncation, prompts, scoring, swap TTA). Every
entry point scores through it: the command line, the work folders, ``--ray``, the HTTP service,
rank and rewards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .compare import GroupMethod, GroupRewards
from .data import ArenaRows, arena_rows_from_pairs
from .engines.base import ScoringEngine
from .engines.select import create_engine, resolve_engine
from .models.checks import preflight
from .models.folder import ModelFolder
from .predict import PredictResult, score_prompts
from .preprocess import (
    STREAM_CHUNK_ROWS,
    PromptSet,
    build_prompts,
    iter_prompt_chunks,
    longest_admissible_prompt,
)
from .prompt import letter_token_ids
from .rewards.batch import GroupBatch
from .settings import JudgeSettings, settings_from_options
from .tta import TTA_MODES, TTAMode


class Judge:
    """A checked model with its tokenizer loaded and its engine decided, ready to judge pairs.

    Checking the model folder and loading its tokenizer cost about a second, starting an engine
    seconds to minutes; a caller with several tables (or a training loop asking for rewards) pays
    that once. The engine starts on the first :meth:`predict`, sized for that table's longest
    prompt, or earlier with :meth:`start`, sized for any prompt truncation lets through. A judge
    closes only an engine it started; use it as a context manager or call :meth:`close`.

    ``engine``, when given, is used as it is (a benchmark's engine started beforehand) and stays open.
    """

    def __init__(self, settings: JudgeSettings, engine: ScoringEngine | None = None) -> None:
        self.folder = ModelFolder(settings.model)
        if engine is None:
            settings = settings.with_engine(resolve_engine(settings.engine, self.folder))
        self.settings = settings
        # Config, tokenizer and answer letters are checked before seconds or minutes of loading weights.
        self.tokenizer = preflight(self.folder, settings.trust_remote_code)
        self.letters = letter_token_ids(self.tokenizer)
        self.engine = engine
        self._owns_engine = engine is None

    @classmethod
    def from_pretrained(cls, model: str | Path, **settings: Any) -> Judge:
        """A judge for the model folder ``model`` with the settings `wsdm-serve predict` takes, by the
        same names: ``engine``, ``device``, ``dtype``, ``precision``, ``batch_tokens``, ``gpus``,
        ``cpus``, ``engines``, ``tensor_parallel``, ``max_model_len``, ``gpu_memory_utilization``,
        ``enforce_eager``, ``max_num_batched_tokens``, ``kv_cache_gib``, ``token_budget``, ``response_word_cap``, ``text_normalization``,
        ``tta``, ``time_budget_minutes``, ``trust_remote_code``, ``progress``. An unknown or
        ill-typed setting raises :class:`~wsdm_serve.settings.SettingsError` (a ``ValueError``)
        naming it; a model folder that fails its checks raises a ``WsdmError`` naming the file.
        """
        return cls(settings_from_options(model, **settings))

    # ------------------------------------------------------------------ prompts
    @property
    def longest_prompt(self) -> int:
        """The longest prompt, in tokens, that truncation lets through with these settings."""
        return longest_admissible_prompt(self.tokenizer, self.settings.truncation)

    def prompts(self, rows: ArenaRows, with_swapped_ids: bool | None = None) -> PromptSet:
        """Every row's prompts; swapped ids when TTA may need them, unless ``with_swapped_ids`` says."""
        settings = self.settings
        return build_prompts(
            rows,
            self.tokenizer,
            settings.truncation,
            with_swapped_ids=settings.tta != "none" if with_swapped_ids is None else with_swapped_ids,
            progress=settings.progress,
        )

    def prompt_chunks(self, rows: ArenaRows, with_swapped_ids: bool) -> Iterator[PromptSet]:
        """The same prompts, yielded a chunk at a time for an engine that is already running."""
        return iter_prompt_chunks(
            rows,
            self.tokenizer,
            self.settings.truncation,
            with_swapped_ids=with_swapped_ids,
            chunk_rows=STREAM_CHUNK_ROWS,
        )

    def rows(self, pairs) -> ArenaRows:
        """``pairs`` as checked, normalised rows (see :func:`~wsdm_serve.data.arena_rows_from_pairs`)."""
        return arena_rows_from_pairs(pairs, self.settings.text_normalization)

    # ------------------------------------------------------------------ scoring
    def start(self, longest_prompt: int | None = None) -> ScoringEngine:
        """Start the engine now (if it is not running), sized for prompts of ``longest_prompt``
        tokens or, by default, any prompt truncation lets through."""
        if self.engine is None:
            longest = self.longest_prompt if longest_prompt is None else longest_prompt
            self.engine = create_engine(self.folder, self.letters, longest, self.settings.engine)
        return self.engine

    def predict(self, pairs, *, tta: TTAMode | None = None, started_at: float | None = None) -> PredictResult:
        """P(A), P(B) of every pair, in input order (``.probs``), after swap TTA.

        ``pairs``: a DataFrame with the arena columns, a list of dicts (``prompt``, ``response_a``,
        ``response_b``, optional ``id``), a list of ``(prompt, response_a, response_b)`` tuples, or
        :class:`~wsdm_serve.data.ArenaRows`. ``tta`` overrides the judge's setting for this call
        (``"all"``: every pair in both orders, as rank and rewards ask). ``started_at`` (a
        ``time.time()`` stamp) is when the job began: the reference's time budget counts everything
        since the start, loading included.
        """
        started_at = time.time() if started_at is None else started_at
        settings = self.settings
        if tta is not None:
            if tta not in TTA_MODES:
                raise ValueError(f"tta={tta!r}: must be one of {', '.join(TTA_MODES)}")
            settings = replace(settings, tta=tta)
        rows = self.rows(pairs)
        with_swapped = settings.tta != "none"
        if self.engine is not None:
            chunks = self.prompt_chunks(rows, with_swapped)
            return score_prompts(rows, chunks, self.engine, settings, started_at)
        prompts = self.prompts(rows, with_swapped)
        self.start(prompts.longest)
        return score_prompts(rows, [prompts], self.engine, settings, started_at)

    def score_groups(self, groups, *, method: GroupMethod) -> list[GroupRewards]:
        """Rewards of each group of responses to one prompt, in input order.

        ``groups``: mappings with ``prompt``, ``responses`` (a list) and, for ``vs-reference``,
        ``reference`` (``id`` optional), or ``(prompt, responses[, reference])`` tuples.
        ``method``: ``vs-reference`` (reward = P(response beats the reference)), ``round-robin``
        (Bradley-Terry strength from all pairs) or ``circular`` (from neighbour pairs); see
        :mod:`wsdm_serve.compare.groups`. Every pair of every group is judged in one
        :meth:`predict` call, in both orders.
        """
        batch = GroupBatch.plan(groups, method)
        if not batch.pairs:  # groups of one response under round-robin or circular
            return batch.rewards(np.zeros(0))
        return batch.rewards(self.predict(batch.pairs, tta="all").probs[:, 0])

    def close(self) -> None:
        if self._owns_engine and self.engine is not None:
            self.engine.close()
            self.engine = None

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_predict(
    rows: ArenaRows | Any,
    settings: JudgeSettings,
    started_at: float | None = None,
    engine: ScoringEngine | None = None,
) -> PredictResult:
    """One table, start to finish: check the model, build prompts, start the engine, score, close.

    ``engine``, when given, is used instead of one built from the settings and stays open.
    """
    with Judge(settings, engine) as judge:
        return judge.predict(rows, started_at=started_at)
