"""A literal, slow transcription of the reference's truncation (section 2.2): the test oracle and the
baseline of tools/bench_preprocess.py.

It trims one token at a time exactly as the published loops describe, so the fast closed form in
``wsdm_serve.truncation`` can be compared with it on any input.
"""

from __future__ import annotations


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def reference_truncate(
    tokenizer, query: str, a: str, b: str, budget: int, word_cap: int
) -> tuple[str, str, str]:
    query = " ".join(query.split(" ")[:256])
    a = " ".join(a.split(" ")[:word_cap])
    b = " ".join(b.split(" ")[:word_cap])
    q_len, a_len, b_len = len(encode(tokenizer, query)), len(encode(tokenizer, a)), len(encode(tokenizer, b))
    if q_len + a_len + b_len > budget:
        if len(encode(tokenizer, query)) >= 256:
            query = tokenizer.decode(encode(tokenizer, query)[:256])
        q_len = len(encode(tokenizer, query))
        if q_len + a_len + b_len > budget:
            room = budget - q_len
            ta, tb = encode(tokenizer, a), encode(tokenizer, b)
            if len(ta) > len(tb):
                while len(ta) + len(tb) > room and len(ta) > len(tb):
                    ta = ta[:-1]
            else:
                while len(ta) + len(tb) > room and len(tb) > len(ta):
                    tb = tb[:-1]
            while len(ta) + len(tb) > room:
                ta = ta[:-1]
                if len(ta) + len(tb) > room:
                    tb = tb[:-1]
            a, b = tokenizer.decode(ta), tokenizer.decode(tb)
    return query, a, b
