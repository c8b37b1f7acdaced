"""Which pairs to judge: between models over a set of questions, or within one group of responses.

Every pair is an unordered comparison (the judge scores both orders and averages them); a pair is
written ``(first, second)`` with indices into the models, or into the group's responses. Schedules
over questions are question-major: all pairs of one question are consecutive, so an engine with a
prefix cache sees the question's shared prompt prefix together.

Between models (``wsdm-serve rank``):
  baseline     every model against the baseline (Arena-Hard, AlpacaEval): K-1 pairs per question
  all          every pair of models: K(K-1)/2 pairs per question
  budget       chosen adaptively under a judgement budget: :mod:`wsdm_serve.compare.budget`

Within one group of N responses to one prompt (rewards for RL):
  vs-reference  each response against a reference response (index N): N pairs
  round-robin   every pair of responses: N(N-1)/2 pairs
  circular      each response against its neighbour (i, i+1 mod N): N pairs (1 for N = 2)
"""

from __future__ import annotations

from typing import Literal

import numpy as np

GroupMethod = Literal["vs-reference", "round-robin", "circular"]
GROUP_METHODS: tuple[str, ...] = ("vs-reference", "round-robin", "circular")


def _pairs(first, second) -> np.ndarray:
    return np.column_stack([np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)]).reshape(
        -1, 2
    )


def baseline_pairs(n_models: int, baseline: int) -> np.ndarray:
    """(model, baseline) for every other model, in model order."""
    if not 0 <= baseline < n_models:
        raise ValueError(f"baseline index {baseline} outside 0..{n_models - 1}")
    others = [m for m in range(n_models) if m != baseline]
    return _pairs(others, [baseline] * len(others))


def all_pairs(n: int) -> np.ndarray:
    """(i, j) for every i < j."""
    first, second = np.triu_indices(n, k=1)
    return _pairs(first, second)


def circular_pairs(n: int) -> np.ndarray:
    """(i, i + 1 mod n): a cycle through the n items, which connects them with n comparisons."""
    if n < 2:
        return _pairs([], [])
    if n == 2:
        return _pairs([0], [1])
    items = np.arange(n)
    return _pairs(items, (items + 1) % n)


def reference_pairs(n: int) -> np.ndarray:
    """(i, n) for each of n responses: the reference is the extra item n."""
    return _pairs(np.arange(n), np.full(n, n))


def group_pairs(method: GroupMethod, n: int) -> np.ndarray:
    """The pairs one group of ``n`` responses is judged on (see the module doc)."""
    if method == "vs-reference":
        return reference_pairs(n)
    if method == "round-robin":
        return all_pairs(n)
    if method == "circular":
        return circular_pairs(n)
    raise ValueError(f"unknown group method {method!r}; one of {', '.join(GROUP_METHODS)}")


def on_every_question(pairs: np.ndarray, n_questions: int) -> np.ndarray:
    """(question, first, second) rows: every pair on every question, question-major."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    questions = np.repeat(np.arange(n_questions, dtype=np.int64), len(pairs))
    return np.column_stack([questions, np.tile(pairs, (n_questions, 1))]).reshape(-1, 3)
