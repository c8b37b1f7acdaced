"""Token-budget truncation of (query, response A, response B), with the reference's semantics.

The reference trimmed responses one token at a time in Python loops (15 copies of them). The loops
have a closed form, computed here once per row: the longer response loses tokens until both are
equally long or the budget is met; the remainder is split alternately, A first, so A loses
``ceil(excess / 2)`` and B ``floor(excess / 2)``. Everything else (word caps on the single space
character, the 256-token query cut that is decoded and re-counted, decoding both responses as soon
as either is trimmed) follows the reference exactly, because the released model was trained on
text cut this way.

One deliberate difference: token counts use ``add_special_tokens=False``. For Qwen tokenizers this
changes nothing; for tokenizers that add a BOS (Llama 3) the reference counted it and then pasted
literal ``<|begin_of_text|>`` strings into the middle of prompts.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TruncationConfig:
    """Budgets of section 2.2; the budget counts query + responses, not the template around them."""

    token_budget: int = 10000
    response_word_cap: int = 4200
    query_word_cap: int = 256
    query_token_cap: int = 256

    def __post_init__(self) -> None:
        for name in ("token_budget", "response_word_cap", "query_word_cap", "query_token_cap"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


INFERENCE_TRUNCATION = TruncationConfig(token_budget=10000, response_word_cap=4200)


@dataclass(frozen=True)
class TruncatedTexts:
    """The three texts as they go into the prompt."""

    query: str
    response_a: str
    response_b: str


def cap_words(text: str, cap: int) -> str:
    """Keep the first ``cap`` pieces split on ``' '`` only (not general whitespace), as the reference."""
    if text.count(" ") < cap:
        return text
    return " ".join(text.split(" ", cap)[:cap])


def plan_response_trim(len_a: int, len_b: int, room: int) -> tuple[int, int]:
    """How many tokens of A and of B survive when they must fit into ``room`` tokens together.

    Mirrors the reference's loops: first the strictly longer response shrinks towards the shorter,
    then A and B lose one token each in turn, A first. A negative room (a query longer than the
    budget) empties both, where the reference's loop never terminated.
    """
    if len_a + len_b <= room:
        return len_a, len_b
    room = max(room, 0)
    excess = len_a + len_b - room
    if len_a > len_b:
        cut = min(excess, len_a - len_b)
        len_a -= cut
    else:
        cut = min(excess, len_b - len_a)
        len_b -= cut
    excess -= cut
    if excess > 0:
        # Here len_a == len_b and excess <= len_a + len_b, so neither side runs out before the other.
        len_a -= (excess + 1) // 2
        len_b -= excess // 2
    return len_a, len_b


Encoder = Callable[[list[str]], list[list[int]]]
Decoder = Callable[[list[list[int]]], list[str]]


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of many texts without special tokens, in one batched call.

    A fast tokenizer's backend ``encode_batch_fast`` skips the character offsets that the
    ``tokenizer(...)`` path computes and throws away: the same ids, about a third faster.
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [encoding.ids for encoding in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def tokenizer_codec(tokenizer) -> tuple[Encoder, Decoder]:
    """Batch encode/decode functions of a Hugging Face tokenizer, with its own decode defaults."""

    def encode(texts: list[str]) -> list[list[int]]:
        return encode_texts(tokenizer, texts)

    def decode(ids: list[list[int]]) -> list[str]:
        if not ids:
            return []
        return tokenizer.batch_decode(ids)

    return encode, decode


def byte_size_bound(tokenizer) -> Callable[[str], int] | None:
    """An upper bound on a text's token count, for byte-level BPE tokenizers (Qwen, GPT-2, Llama 3).

    Every token of such a tokenizer covers at least one UTF-8 byte of the normalised input, so a row
    whose normalised texts have at most ``budget`` bytes cannot exceed ``budget`` tokens and needs no
    counting. Returns None for other tokenizers, which are always counted.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    if not _is_byte_level_bpe(tokenizer, backend):
        return None
    normalizer = backend.normalizer
    if normalizer is None:
        return lambda text: len(text.encode("utf-8", "surrogatepass"))
    return lambda text: len(normalizer.normalize_str(text).encode("utf-8", "surrogatepass"))


# Serialising a 150k-token vocabulary to inspect its model type takes most of a second, and callers
# truncate in many chunks: the answer is kept per tokenizer object (its model does not change).
_BYTE_LEVEL_BPE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _is_byte_level_bpe(tokenizer, backend) -> bool:
    try:
        return _BYTE_LEVEL_BPE[tokenizer]
    except (KeyError, TypeError):
        pass
    spec = json.loads(backend.to_str())
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    answer = spec.get("model", {}).get("type") == "BPE" and any(p.get("type") == "ByteLevel" for p in parts)
    with contextlib.suppress(TypeError):
        _BYTE_LEVEL_BPE[tokenizer] = answer
    return answer


def truncate_rows(
    tokenizer,
    queries: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    config: TruncationConfig = INFERENCE_TRUNCATION,
) -> list[TruncatedTexts]:
    """Truncate many rows with a few batched tokenizer calls (the tokenizer parallelises them)."""
    encode, decode = tokenizer_codec(tokenizer)
    query = [cap_words(t, config.query_word_cap) for t in queries]
    answer_a = [cap_words(t, config.response_word_cap) for t in responses_a]
    answer_b = [cap_words(t, config.response_word_cap) for t in responses_b]
    budget = config.token_budget

    # Only rows that might be over budget are tokenized; most real rows are settled by their size.
    candidates = list(range(len(query)))
    size = byte_size_bound(tokenizer)
    if size is not None:
        candidates = [
            i for i in candidates if size(query[i]) + size(answer_a[i]) + size(answer_b[i]) > budget
        ]
    m = len(candidates)
    ids = encode(
        [query[i] for i in candidates] + [answer_a[i] for i in candidates] + [answer_b[i] for i in candidates]
    )
    q_ids = dict(zip(candidates, ids[:m], strict=True))
    a_ids = dict(zip(candidates, ids[m : 2 * m], strict=True))
    b_ids = dict(zip(candidates, ids[2 * m :], strict=True))

    over = [i for i in candidates if len(q_ids[i]) + len(a_ids[i]) + len(b_ids[i]) > budget]
    long_query = [i for i in over if len(q_ids[i]) >= config.query_token_cap]
    if long_query:
        cut_queries = decode([q_ids[i][: config.query_token_cap] for i in long_query])
        recounted = encode(cut_queries)
        for i, text, q in zip(long_query, cut_queries, recounted, strict=True):
            query[i] = text
            q_ids[i] = q

    still_over = [i for i in over if len(q_ids[i]) + len(a_ids[i]) + len(b_ids[i]) > budget]
    if still_over:
        kept = []
        for i in still_over:
            keep_a, keep_b = plan_response_trim(len(a_ids[i]), len(b_ids[i]), budget - len(q_ids[i]))
            kept.append(a_ids[i][:keep_a])
            kept.append(b_ids[i][:keep_b])
        decoded = decode(kept)
        for j, i in enumerate(still_over):
            answer_a[i] = decoded[2 * j]
            answer_b[i] = decoded[2 * j + 1]

    return [TruncatedTexts(q, a, b) for q, a, b in zip(query, answer_a, answer_b, strict=True)]
