"""Time-budgeted swap test-time augmentation (the reference's rule, section 7.4).

After the forward pass, the least confident rows are scored again with the responses swapped, as
many as the remaining time allows, and each letter's probability becomes the mean of the forward
value and the swapped value that belongs to the same response. All times are minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

TTAMode = Literal["none", "all", "budget"]
TTA_MODES: tuple[str, ...] = ("none", "all", "budget")


def reference_time_budget(n_rows: int) -> int:
    """Minutes the reference allowed for ``n_rows``: 720 above 20k, 285 strictly between 8k and 20k.

    Exactly 8000 and 20000 rows fall into the proportional branch, as in the reference.
    """
    if n_rows > 20000:
        return 720
    if 8000 < n_rows < 20000:
        return 285
    return int(n_rows / 25000 * 720)


def rows_to_rescore(n_rows: int, budget: float, elapsed: float, forward: float) -> int:
    """How many rows fit into the time left, keeping a margin of 10/285 of the budget."""
    remain = budget - elapsed
    alpha = (10 / 285) * budget
    ratio = (remain - alpha) / forward if remain > 1 and forward > 0 else 0.0
    return max(0, min(n_rows, int(ratio * n_rows)))


def softmax2(logits: np.ndarray) -> np.ndarray:
    """Two-way softmax per row, in float64: [n, 2] logits -> [n, 2] probabilities."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def least_confident(probs: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` rows with the smallest |P(A) - P(B)|; ties keep input order."""
    hardness = np.abs(probs[:, 0] - probs[:, 1])
    return np.argsort(hardness, kind="stable")[:count]


def combine_swapped(forward: np.ndarray, swapped: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Average forward and swapped probabilities for ``rows``.

    In the swapped prompt the Response_A slot holds the original B, so its probability is mapped to
    B (and vice versa) before the arithmetic mean.
    """
    combined = np.array(forward, dtype=np.float64, copy=True)
    mapped = np.asarray(swapped, dtype=np.float64)[:, ::-1]
    combined[rows] = (combined[rows] + mapped) / 2
    return combined


@dataclass(frozen=True)
class TTAPlan:
    mode: TTAMode
    budget_minutes: float | None

    def count(self, n_rows: int, elapsed: float, forward: float) -> int:
        if self.mode == "none":
            return 0
        if self.mode == "all":
            return n_rows
        budget = reference_time_budget(n_rows) if self.budget_minutes is None else self.budget_minutes
        return rows_to_rescore(n_rows, budget, elapsed, forward)


def winners(probs: np.ndarray) -> list[str]:
    """``model_a`` only when P(A) > P(B); exact ties go to ``model_b`` as in the reference."""
    return ["model_a" if a > b else "model_b" for a, b in probs]
