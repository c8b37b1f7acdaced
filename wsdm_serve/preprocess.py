"""Rows -> judge prompts -> token ids, in chunks, with a progress bar.

Work is batched per chunk so the Rust tokenizer can use every core, and a chunk is small enough to
keep the progress bar moving on large tables. The chunks can also be consumed as they are built
(:func:`iter_prompt_chunks`), so an engine that is already running starts on the first rows while
later ones are still being tokenized.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .data import ArenaRows
from .prompt import JudgePrompt
from .truncation import INFERENCE_TRUNCATION, TruncationConfig, encode_texts, truncate_rows

CHUNK_ROWS = 256
STREAM_CHUNK_ROWS = (16, 32, 64, 128, CHUNK_ROWS)
"""Chunk sizes when prompts are streamed into a running engine: the first chunk is small so the GPU
starts within milliseconds; the last size repeats."""
PROMPT_SLACK_TOKENS = 64
"""Tokens a truncated prompt may exceed the budget by: re-encoding cut text can merge or split a few
tokens at each cut. A prompt beyond the bound is a one-line error of the engine, never a wrong score."""


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

    @classmethod
    def concat(cls, parts: Sequence[PromptSet]) -> PromptSet:
        """One set from consecutive chunks, in order (a single chunk is returned as it is, so a
        table prompted in one piece is not copied again)."""
        if len(parts) == 1:
            return parts[0]
        swapped_ids = None
        if parts and all(part.swapped_token_ids is not None for part in parts):
            swapped_ids = [ids for part in parts for ids in part.swapped_token_ids]
        return cls(
            [text for part in parts for text in part.texts],
            [text for part in parts for text in part.swapped_texts],
            [ids for part in parts for ids in part.token_ids],
            swapped_ids,
        )


def chunk_bounds(n_rows: int, sizes: Sequence[int]) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of the given sizes; the last size repeats."""
    start, step = 0, 0
    while start < n_rows:
        size = sizes[min(step, len(sizes) - 1)]
        yield start, min(start + size, n_rows)
        start += size
        step += 1


def iter_prompt_chunks(
    rows: ArenaRows,
    tokenizer,
    config: TruncationConfig = INFERENCE_TRUNCATION,
    *,
    system_prompt: str | None = None,
    with_swapped_ids: bool = True,
    chunk_rows: Sequence[int] = (CHUNK_ROWS,),
) -> Iterator[PromptSet]:
    """Truncate, render and tokenize the rows chunk by chunk, yielding each chunk when it is ready.

    Every row is prompted on its own, so the chunks concatenate to exactly what one pass over the
    table gives; swapped ids only when TTA may need them.
    """
    prompt = JudgePrompt(tokenizer) if system_prompt is None else JudgePrompt(tokenizer, system_prompt)
    for start, stop in chunk_bounds(len(rows), chunk_rows):
        chunk = truncate_rows(
            tokenizer,
            rows.prompts[start:stop],
            rows.responses_a[start:stop],
            rows.responses_b[start:stop],
            config,
        )
        forward = [prompt.render(t.query, t.response_a, t.response_b) for t in chunk]
        backward = [prompt.render(t.query, t.response_b, t.response_a) for t in chunk]
        yield PromptSet(
            forward,
            backward,
            tokenize_prompts(tokenizer, forward),
            tokenize_prompts(tokenizer, backward) if with_swapped_ids else None,
        )


def build_prompts(
    rows: ArenaRows,
    tokenizer,
    config: TruncationConfig = INFERENCE_TRUNCATION,
    *,
    system_prompt: str | None = None,
    with_swapped_ids: bool = True,
    progress: bool = True,
) -> PromptSet:
    """Every row's prompts at once, under a progress bar."""
    parts: list[PromptSet] = []
    with tqdm(
        total=len(rows), desc="preprocess", unit="row", disable=not progress, dynamic_ncols=True
    ) as bar:
        for part in iter_prompt_chunks(
            rows, tokenizer, config, system_prompt=system_prompt, with_swapped_ids=with_swapped_ids
        ):
            parts.append(part)
            bar.update(len(part))
    return PromptSet.concat(parts)


def tokenize_prompts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Finished prompts already hold the template's special tokens, so none are added."""
    return encode_texts(tokenizer, texts)


def longest_admissible_prompt(tokenizer, config: TruncationConfig = INFERENCE_TRUNCATION) -> int:
    """Tokens of the longest prompt truncation lets through: the template around empty texts, the
    token budget (or the query cap, which a query alone may reach when the budget is below it) and
    :data:`PROMPT_SLACK_TOKENS`. An engine that must take any row before it sees them (a server, a
    job scored unit by unit) is sized for this."""
    template = tokenize_prompts(tokenizer, [JudgePrompt(tokenizer).render("", "", "")])[0]
    return len(template) + max(config.token_budget, config.query_token_cap) + PROMPT_SLACK_TOKENS
