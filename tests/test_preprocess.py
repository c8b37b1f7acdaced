"""Prompt building in chunks: streamed chunks must be exactly the whole-table prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsdm_serve.data import ArenaRows, load_arena_rows
from wsdm_serve.preprocess import (
    STREAM_CHUNK_ROWS,
    PromptSet,
    build_prompts,
    chunk_bounds,
    iter_prompt_chunks,
)
from wsdm_serve.truncation import TruncationConfig

PANDALM = Path(__file__).parent / "assets" / "pandalm_train.parquet"


def _rows(n: int) -> ArenaRows:
    rows = load_arena_rows(PANDALM)
    return ArenaRows(rows.ids[:n], rows.prompts[:n], rows.responses_a[:n], rows.responses_b[:n], 0)


def test_chunk_bounds_cover_every_row_once_and_repeat_the_last_size():
    assert list(chunk_bounds(10, (2, 3))) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert list(chunk_bounds(1, (16, 32))) == [(0, 1)]
    assert list(chunk_bounds(0, (16,))) == []


@pytest.mark.parametrize("with_swapped_ids", [True, False])
def test_streamed_chunks_concatenate_to_the_whole_table(tokenizer, with_swapped_ids):
    """Truncation is per row, so growing chunks (16, 32, 64, ...) give the same prompts and ids as
    one pass; a budget of 300 tokens makes many of these real rows go through the truncation."""
    rows = _rows(150)
    config = TruncationConfig(token_budget=300)
    whole = build_prompts(rows, tokenizer, config, with_swapped_ids=with_swapped_ids, progress=False)
    chunks = list(
        iter_prompt_chunks(
            rows, tokenizer, config, with_swapped_ids=with_swapped_ids, chunk_rows=STREAM_CHUNK_ROWS
        )
    )
    assert [len(chunk) for chunk in chunks] == [16, 32, 64, 38]
    joined = PromptSet.concat(chunks)
    assert joined.texts == whole.texts and joined.swapped_texts == whole.swapped_texts
    assert joined.token_ids == whole.token_ids
    assert joined.swapped_token_ids == whole.swapped_token_ids
    assert (joined.swapped_token_ids is None) is (not with_swapped_ids)
    assert joined.longest == whole.longest and (joined.n_tokens == whole.n_tokens).all()
    untruncated = build_prompts(rows, tokenizer, TruncationConfig(token_budget=100_000), progress=False)
    assert sum(a != b for a, b in zip(whole.texts, untruncated.texts, strict=True)) > 10
