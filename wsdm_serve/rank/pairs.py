"""The pairs ``rank`` judges: the texts of each scheduled (question, model, model), and their keys.

A judgement depends on the pair's three texts, in their order, and on the judge's settings; not on
the models' names. So it is stored under a key of (prompt, response_a, response_b): a later run that
schedules the same texts in the same order (the same two models on the same question, whatever else
changed) reads it back. The order is part of the key because truncation is not symmetric: when both
responses must lose tokens, response A loses the odd one (the reference's rule), so (a, b) and
(b, a) can be cut differently. Schedules keep a stable order (each model before the baseline; in
name order otherwise), so only switching between ``--pairs baseline`` and ``all`` re-judges pairs.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from .answers import Answers

JUDGED_COLUMNS = ("key", "p_a_forward", "p_a_swapped", "n_tokens")
"""A judgement as the store keeps it and the judge returns it: P(response_a wins) from the prompt as
scheduled and from the swapped prompt, and the prompt's tokens."""


def pair_key(prompt: str, response_a: str, response_b: str) -> str:
    """The key of a pair's texts, in this order."""
    text = json.dumps([prompt, response_a, response_b], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pair_table(answers: Answers, rows: np.ndarray) -> pd.DataFrame:
    """One row per scheduled (question, model_a, model_b) index triple, in schedule order."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    question, first, second = rows[:, 0], rows[:, 1], rows[:, 2]
    prompts = [answers.prompts[q] for q in question]
    response_a = [answers.responses[q][m] for q, m in zip(question, first, strict=True)]
    response_b = [answers.responses[q][m] for q, m in zip(question, second, strict=True)]
    keys = [pair_key(p, a, b) for p, a, b in zip(prompts, response_a, response_b, strict=True)]
    table = pd.DataFrame(
        {
            "question": question,
            "question_id": [answers.question_ids[q] for q in question],
            "model_a": [answers.models[m] for m in first],
            "model_b": [answers.models[m] for m in second],
            "prompt": prompts,
            "response_a": response_a,
            "response_b": response_b,
            "length_a": [len(text) for text in response_a],
            "length_b": [len(text) for text in response_b],
            "key": keys,
        }
    )
    for column, values in answers.groups.items():
        table[column] = [values[q] for q in question]
    return table


def arena_rows(table: pd.DataFrame, keys: set[str]) -> pd.DataFrame:
    """The arena rows (``id`` = key, prompt, response_a, response_b) of the pairs of ``table`` whose
    key is in ``keys``, each once, in table order (a question's pairs together)."""
    chosen = table[table["key"].isin(keys)].drop_duplicates("key")
    return (
        chosen[["key", "prompt", "response_a", "response_b"]]
        .rename(columns={"key": "id"})
        .reset_index(drop=True)
    )


def judgements_frame(table: pd.DataFrame, judged: pd.DataFrame) -> pd.DataFrame:
    """The judgements table: each scheduled pair with P(model_a wins), forward, swapped and averaged.

    ``judged`` holds :data:`JUDGED_COLUMNS` for (at least) every key of ``table``.
    """
    found = judged.drop_duplicates("key").set_index("key").reindex(table["key"])
    if found["p_a_forward"].isna().any():
        raise RuntimeError("a scheduled pair has no judgement")
    p_a_forward = found["p_a_forward"].to_numpy(dtype=np.float64)
    p_a_swapped = found["p_a_swapped"].to_numpy(dtype=np.float64)
    frame = pd.DataFrame(
        {
            "question_id": table["question_id"].to_numpy(),
            "model_a": table["model_a"].to_numpy(),
            "model_b": table["model_b"].to_numpy(),
            "p_a": (p_a_forward + p_a_swapped) / 2,
            "p_a_forward": p_a_forward,
            "p_a_swapped": p_a_swapped,
            "length_a": table["length_a"].to_numpy(),
            "length_b": table["length_b"].to_numpy(),
        }
    )
    for column in ("language", "category"):
        if column in table.columns:
            frame[column] = table[column].to_numpy()
    return frame
