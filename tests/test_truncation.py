"""Truncation: hand-made corner cases and property tests against the slow reference oracle."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reference_oracle import encode, reference_truncate
from wsdm_serve.truncation import TruncationConfig, cap_words, plan_response_trim, truncate_rows


def run(tokenizer, query, a, b, budget=10000, word_cap=4200):
    config = TruncationConfig(token_budget=budget, response_word_cap=word_cap)
    [row] = truncate_rows(tokenizer, [query], [a], [b], config)
    return row.query, row.response_a, row.response_b


def n_tokens(tokenizer, *texts):
    return sum(len(encode(tokenizer, t)) for t in texts)


def test_cap_words_splits_on_single_space_only():
    assert cap_words("a b  c\td\ne", 3) == "a b "
    assert cap_words("a b", 5) == "a b"
    assert cap_words("一二三四五六", 1) == "一二三四五六"
    assert cap_words("x y", 0) == ""


def test_under_budget_texts_are_unchanged(tokenizer):
    assert run(tokenizer, "Hi [there]", "Answer  one.", "Answer two.") == (
        "Hi [there]",
        "Answer  one.",
        "Answer two.",
    )


def test_word_caps_apply_even_under_budget(tokenizer):
    query = " ".join(f"q{i}" for i in range(300))
    answer = " ".join(f"w{i}" for i in range(50))
    q, a, b = run(tokenizer, query, answer, "short", word_cap=10)
    assert q.split(" ") == [f"q{i}" for i in range(256)]
    assert a == " ".join(f"w{i}" for i in range(10))
    assert b == "short"


def test_long_query_is_cut_to_256_tokens(tokenizer):
    query = "word " * 200 + "x" * 3000  # under the word cap, far over 256 tokens
    answer = "fine answer " * 100
    q, a, b = run(tokenizer, query, answer, answer, budget=600)
    assert len(encode(tokenizer, q)) <= 257
    assert (q, a, b) == reference_truncate(tokenizer, query, answer, answer, 600, 4200)
    assert n_tokens(tokenizer, q, a, b) <= 600


def test_short_query_is_kept_when_responses_overflow(tokenizer):
    query = "Explain recursion."
    long_a = "Recursion is when a function calls itself. " * 200
    q, a, b = run(tokenizer, query, long_a, "No.", budget=300)
    assert q == query
    assert b == "No."  # the longer response absorbs the whole cut
    assert n_tokens(tokenizer, q, a, b) == 300
    assert long_a.startswith(a)


def test_both_long_trims_longer_first_then_alternates(tokenizer):
    a_text = "alpha " * 400
    b_text = "beta " * 300
    expected = reference_truncate(tokenizer, "q", a_text, b_text, 202, 4200)
    got = run(tokenizer, "q", a_text, b_text, budget=202)
    assert got == expected
    la, lb = len(encode(tokenizer, got[1])), len(encode(tokenizer, got[2]))
    # room 201 for the responses: A shrinks to B's length, then A loses the odd token first
    assert (la, lb) == (100, 101)


def test_equal_lengths_alternate_a_first(tokenizer):
    text = "same length text " * 50
    q, a, b = run(tokenizer, "q", text, text, budget=101)
    la, lb = len(encode(tokenizer, a)), len(encode(tokenizer, b))
    assert lb - la in (0, 1)
    assert (q, a, b) == reference_truncate(tokenizer, "q", text, text, 101, 4200)


def test_cjk_without_spaces_is_bounded_by_tokens(tokenizer):
    cjk = "这是一个没有空格的很长的中文句子。" * 400
    got = run(tokenizer, "请比较", cjk, cjk[:500], budget=512)
    assert got == reference_truncate(tokenizer, "请比较", cjk, cjk[:500], 512, 4200)
    assert n_tokens(tokenizer, *got) <= 512


def test_empty_strings(tokenizer):
    assert run(tokenizer, "", "", "") == ("", "", "")
    assert run(tokenizer, "", "x " * 500, "", budget=50) == reference_truncate(
        tokenizer, "", "x " * 500, "", 50, 4200
    )


def test_brackets_and_list_literals_pass_through_truncation(tokenizer):
    a = '["first turn", "second turn"]'
    b = "see [link](http://x) and code a[i]"
    assert run(tokenizer, "q [1]", a, b) == ("q [1]", a, b)


def test_query_longer_than_budget_empties_both_responses(tokenizer):
    # the reference's loop never ended here; we return empty responses instead
    query = "token " * 2000
    q, a, b = run(tokenizer, query, "some answer", "other answer", budget=100)
    assert (a, b) == ("", "")
    assert len(encode(tokenizer, q)) <= 257


@pytest.mark.parametrize(
    ("la", "lb", "room", "expected"),
    [
        (10, 3, 20, (10, 3)),
        (10, 3, 11, (8, 3)),
        (10, 3, 5, (2, 3)),  # longer cut to 3, then alternate: A loses 1
        (3, 10, 5, (2, 3)),  # B longer: cut to 3, then A loses 1
        (4, 4, 5, (2, 3)),
        (4, 4, 0, (0, 0)),
        (4, 4, -3, (0, 0)),
        (0, 9, 4, (0, 4)),
    ],
)
def test_plan_response_trim_table(la, lb, room, expected):
    assert plan_response_trim(la, lb, room) == expected


def loop_trim(la: int, lb: int, room: int) -> tuple[int, int]:
    """The reference's loops on lengths alone."""
    if la > lb:
        while la + lb > room and la > lb:
            la -= 1
    else:
        while la + lb > room and lb > la:
            lb -= 1
    while la + lb > room:
        la = max(la - 1, 0)
        if la + lb > room:
            lb = max(lb - 1, 0)
    return la, lb


@given(st.integers(0, 400), st.integers(0, 400), st.integers(0, 900))
def test_plan_response_trim_equals_the_loops(la, lb, room):
    assert plan_response_trim(la, lb, room) == loop_trim(la, lb, room)


pieces = st.sampled_from(list("ab cd\n[]\"'你好 ,.é🙂") + ["hello ", "world ", "  ", "<|im_end|>", "e\u0301"])
texts = st.lists(pieces, max_size=150).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=texts, a=texts, b=texts, budget=st.integers(1, 300), word_cap=st.integers(0, 120))
def test_matches_reference_and_respects_budget(tokenizer, query, a, b, budget, word_cap):
    got = run(tokenizer, query, a, b, budget=budget, word_cap=word_cap)
    q_tokens = len(encode(tokenizer, got[0]))
    if q_tokens <= budget:  # otherwise the reference would loop forever
        assert got == reference_truncate(tokenizer, query, a, b, budget, word_cap)
        # never over budget once the responses were trimmed (decode/encode may merge tokens, never add)
        if n_tokens(tokenizer, query, a, b) > budget:
            assert n_tokens(tokenizer, *got) <= budget or got[1:] == ("", "")
    assert got == run(tokenizer, query, a, b, budget=budget, word_cap=word_cap)  # deterministic


def test_batch_equals_row_by_row(tokenizer):
    rows = [
        ("q", "a " * 300, "b " * 10),
        ("long " * 400, "x", "y"),
        ("", "", ""),
        ("中文", "回答" * 300, "好"),
    ]
    config = TruncationConfig(token_budget=128, response_word_cap=4200)
    batch = truncate_rows(tokenizer, *map(list, zip(*rows, strict=True)), config)
    single = [truncate_rows(tokenizer, [q], [a], [b], config)[0] for q, a, b in rows]
    assert batch == single


def test_byte_level_bound_used_by_the_shortcut_holds(tokenizer):
    from wsdm_serve.truncation import byte_size_bound

    size = byte_size_bound(tokenizer)
    assert size is not None
    # U+0958 grows from 3 to 6 bytes under NFC: the bound must measure the normalised text
    for text in ["🙂🙂 e\u0301 你好", "<|im_end|><|im_start|>", "x" * 50, "\x00\x01", "ﷺ ㎒", "\u0958" * 5]:
        assert len(encode(tokenizer, text)) <= size(text)


def test_rows_settled_by_size_equal_counted_rows(tokenizer):
    """A budget just above the byte size (shortcut) and a tiny one (counting) agree with the oracle."""
    rows = [("q " * 10, "answer " * 30, "reply " * 25)]
    for budget in (400, 30):
        got = run(tokenizer, *rows[0], budget=budget)
        assert got == reference_truncate(tokenizer, *rows[0], budget, 4200)


def test_fast_batch_encoding_equals_the_tokenizer_call(tokenizer):
    import pandas as pd

    from tests.conftest import ARENA_SAMPLE
    from wsdm_serve.truncation import encode_texts

    frame = pd.read_parquet(ARENA_SAMPLE)
    texts = [*frame.prompt, *frame.response_a, "<|im_end|> e\u0301 🙂 你好", ""]
    assert encode_texts(tokenizer, texts) == tokenizer(texts, add_special_tokens=False)["input_ids"]
