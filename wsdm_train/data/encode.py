"""Rows -> truncated, rendered, tokenized prompts as Arrow columns, chunk by chunk.

Truncation, the prompt and tokenization are the serving package's own (one implementation of each),
so training data is cut and framed exactly as inference will cut and frame it. Work is done in
chunks: the Rust tokenizer parallelises each batched call, and each chunk's token ids go straight
into Arrow arrays, because a hundred thousand Python lists of two thousand ints would need gigabytes.

A chunk that fails to tokenize is retried row by row, so one bad row is skipped with its reason and
the rest of the chunk is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from wsdm_serve.preprocess import tokenize_prompts
from wsdm_serve.prompt import JudgePrompt
from wsdm_serve.truncation import TruncationConfig, truncate_rows

CHUNK_ROWS = 1024
IDS_TYPE = pa.list_(pa.int32())


@dataclass
class Encoded:
    """Encoded rows: ``kept`` indexes the input rows that made it; ``failures`` says why others did not."""

    kept: np.ndarray
    columns: dict[str, pa.ChunkedArray]
    failures: list[tuple[int, str]] = field(default_factory=list)

    @property
    def n_tokens_total(self) -> int:
        return int(pc.sum(self.columns["n_tokens"]).as_py() or 0)


def _render(prompt: JudgePrompt, tokenizer, cut, swapped: bool) -> dict[str, list]:
    forward = [prompt.render(t.query, t.response_a, t.response_b) for t in cut]
    out = {"text": forward, "input_ids": tokenize_prompts(tokenizer, forward)}
    if swapped:
        backward = [prompt.render(t.query, t.response_b, t.response_a) for t in cut]
        out["text_swapped"] = backward
        out["input_ids_swapped"] = tokenize_prompts(tokenizer, backward)
    return out


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def encode_rows(
    tokenizer,
    prompt: JudgePrompt,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    truncation: TruncationConfig,
    *,
    swapped: bool = False,
    desc: str = "encode",
    progress: bool = True,
) -> Encoded:
    """Truncate, render and tokenize every row; ``swapped`` adds the B-first variant of each row."""
    n = len(prompts)
    kept: list[np.ndarray] = []
    failures: list[tuple[int, str]] = []
    chunks: dict[str, list[pa.Array]] = {}
    with tqdm(total=n, desc=desc, unit="row", disable=not progress, dynamic_ncols=True, leave=False) as bar:
        for start in range(0, n, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, n)
            index = np.arange(start, stop)
            try:
                cut = truncate_rows(
                    tokenizer,
                    prompts[start:stop],
                    responses_a[start:stop],
                    responses_b[start:stop],
                    truncation,
                )
                out = _render(prompt, tokenizer, cut, swapped)
            except Exception:  # noqa: BLE001 - isolate the failing rows below, whatever the tokenizer raised
                out, index = _row_by_row(
                    tokenizer,
                    prompt,
                    prompts,
                    responses_a,
                    responses_b,
                    truncation,
                    swapped,
                    start,
                    stop,
                    failures,
                )
            kept.append(index)
            for name, values in out.items():
                chunks.setdefault(name, []).append(_to_arrow(name, values))
            bar.update(stop - start)
    columns = {name: pa.chunked_array(parts, type=parts[0].type) for name, parts in chunks.items()}
    if not columns:
        columns = _empty_columns(swapped)
    columns["n_tokens"] = _lengths(columns["input_ids"])
    if swapped:
        columns["n_tokens_swapped"] = _lengths(columns["input_ids_swapped"])
    kept_index = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    return Encoded(kept=kept_index, columns=columns, failures=failures)


def _row_by_row(
    tokenizer, prompt, prompts, responses_a, responses_b, truncation, swapped, start, stop, failures
):
    merged: dict[str, list] = {}
    index = []
    for i in range(start, stop):
        try:
            cut = truncate_rows(tokenizer, [prompts[i]], [responses_a[i]], [responses_b[i]], truncation)
            out = _render(prompt, tokenizer, cut, swapped)
        except Exception as exc:  # noqa: BLE001 - the row is skipped and the reason recorded
            failures.append((i, f"cannot be tokenized ({_one_line(exc)})"))
            continue
        index.append(i)
        for name, values in out.items():
            merged.setdefault(name, []).extend(values)
    if not index:
        merged = {name: [] for name in _empty_columns(swapped)}
    return merged, np.asarray(index, dtype=np.int64)


def _to_arrow(name: str, values: list) -> pa.Array:
    if name.startswith("input_ids"):
        return pa.array(values, type=IDS_TYPE)
    return pa.array(values, type=pa.string())


def _lengths(ids: pa.ChunkedArray) -> pa.ChunkedArray:
    return pa.chunked_array(
        [pc.list_value_length(chunk).cast(pa.int32()) for chunk in ids.chunks], type=pa.int32()
    )


def _empty_columns(swapped: bool) -> dict[str, pa.ChunkedArray]:
    names = ["text", "input_ids"] + (["text_swapped", "input_ids_swapped"] if swapped else [])
    return {
        name: pa.chunked_array([], type=IDS_TYPE if name.startswith("input_ids") else pa.string())
        for name in names
    }
