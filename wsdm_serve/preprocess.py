"""Rows -> judge prompts -> token ids, in chunks, with a progress bar.

Work is batched per chunk so the Rust tokenizer can use every core, and a chunk is small enough to
keep the progress bar moving on large tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .data import ArenaRows
from .prompt import JudgePrompt
from .truncation import INFERENCE_TRUNCATION, TruncationConfig, encode_texts, truncate_rows

CHUNK_ROWS = 256


@dataclass
class PromptSet:
    """Forward and swapped prompts of every row, in input order."""

    texts: list[str]
    swapped_texts: list[str]
    token_ids: list[list[int]]
    swapped_token_ids: list[list[int]] | None = None
    n_tokens: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.n_tokens = np.fromiter(
            (len(ids) for ids in self.token_ids), dtype=np.int64, count=len(self.token_ids)
        )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def longest(self) -> int:
        """Longest sequence of either orientation: what an engine's context must hold."""
        lengths = [int(self.n_tokens.max(initial=0))]
        if self.swapped_token_ids is not None:
            lengths.append(max((len(ids) for ids in self.swapped_token_ids), default=0))
        return max(lengths)


def build_prompts(
    rows: ArenaRows,
    tokenizer,
    config: TruncationConfig = INFERENCE_TRUNCATION,
    *,
    system_prompt: str | None = None,
    with_swapped_ids: bool = True,
    progress: bool = True,
) -> PromptSet:
    """Truncate, render and tokenize every row; swapped ids only when TTA may need them."""
    prompt = JudgePrompt(tokenizer) if system_prompt is None else JudgePrompt(tokenizer, system_prompt)
    texts: list[str] = []
    swapped: list[str] = []
    ids: list[list[int]] = []
    swapped_ids: list[list[int]] = []
    with tqdm(
        total=len(rows), desc="preprocess", unit="row", disable=not progress, dynamic_ncols=True
    ) as bar:
        for start in range(0, len(rows), CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, len(rows))
            chunk = truncate_rows(
                tokenizer,
                rows.prompts[start:stop],
                rows.responses_a[start:stop],
                rows.responses_b[start:stop],
                config,
            )
            forward = [prompt.render(t.query, t.response_a, t.response_b) for t in chunk]
            backward = [prompt.render(t.query, t.response_b, t.response_a) for t in chunk]
            texts.extend(forward)
            swapped.extend(backward)
            ids.extend(tokenize_prompts(tokenizer, forward))
            if with_swapped_ids:
                swapped_ids.extend(tokenize_prompts(tokenizer, backward))
            bar.update(stop - start)
    return PromptSet(texts, swapped, ids, swapped_ids if with_swapped_ids else None)


def tokenize_prompts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Finished prompts already hold the template's special tokens, so none are added."""
    return encode_texts(tokenizer, texts)
