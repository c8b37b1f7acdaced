"""Rewards for one group of responses to one prompt, from the judge's pairwise probabilities.

A policy-optimisation step (GRPO, RLOO, online DPO) samples N responses per prompt and wants one
number per response. Given P(first beats second) for the pairs of :func:`~wsdm_serve.compare.schedule.group_pairs`
(both orders averaged), :func:`group_rewards` returns:

  vs-reference  reward_i = P(response i beats the reference)
  round-robin   reward_i = Bradley-Terry strength of i within the group (natural log-odds, mean 0),
                fitted to the N(N-1)/2 probabilities as soft outcomes; also the mean win probability
  circular      the same fit on the N neighbour pairs (i, i+1 mod N): N comparisons instead of
                N(N-1)/2, for large groups

and the pairwise matrix P(row beats column) (the reference, for vs-reference, is the last row and
column; pairs not judged are NaN). Probabilities are clipped to [1e-6, 1 - 1e-6] for the fit, so a
response the judge prefers with certainty gets a large but finite strength.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bradley_terry import BradleyTerryFit, Comparisons
from .schedule import GroupMethod, group_pairs

CLIP = 1e-6


@dataclass(frozen=True)
class GroupRewards:
    method: str
    rewards: np.ndarray
    """One reward per response: P(beats reference) for vs-reference, the strength otherwise."""
    matrix: np.ndarray
    """(M, M) P(row beats column); M = N, or N + 1 with the reference last; NaN where not judged."""
    mean_win: np.ndarray
    """Mean P(win) of each response over the pairs it was judged in."""
    strengths: np.ndarray | None
    """Bradley-Terry strengths within the group (round-robin, circular); None for vs-reference."""


def pairwise_matrix(size: int, pairs: np.ndarray, p_first: np.ndarray) -> np.ndarray:
    """(size, size) P(row beats column) from pair probabilities; NaN where not judged."""
    matrix = np.full((size, size), np.nan)
    first, second = pairs[:, 0], pairs[:, 1]
    matrix[first, second] = p_first
    matrix[second, first] = 1.0 - p_first
    return matrix


def group_rewards(
    method: GroupMethod, n: int, p_first: np.ndarray, pairs: np.ndarray | None = None
) -> GroupRewards:
    """Rewards of a group of ``n`` responses; ``p_first[k]`` = P(pairs[k, 0] beats pairs[k, 1]).

    ``pairs`` defaults to ``group_pairs(method, n)``, the order the judge should be given them in.
    """
    pairs = group_pairs(method, n) if pairs is None else np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    p_first = np.asarray(p_first, dtype=np.float64).reshape(-1)
    if len(p_first) != len(pairs):
        raise ValueError(f"{len(p_first)} probabilities for {len(pairs)} pairs")
    if np.any(~np.isfinite(p_first)) or np.any((p_first < 0) | (p_first > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    size = n + 1 if method == "vs-reference" else n
    matrix = pairwise_matrix(size, pairs, p_first)
    with np.errstate(invalid="ignore"):
        mean_win = np.nanmean(matrix[:n], axis=1) if len(pairs) else np.full(n, 0.5)
    mean_win = np.where(np.isnan(mean_win), 0.5, mean_win)
    if method == "vs-reference":
        return GroupRewards(method, matrix[:n, n].copy(), matrix, mean_win, None)
    strengths = np.zeros(n)
    if len(pairs):
        comparisons = Comparisons(
            models=tuple(str(i) for i in range(n)),
            a=pairs[:, 0],
            b=pairs[:, 1],
            outcome=np.clip(p_first, CLIP, 1.0 - CLIP),
            question=np.arange(len(pairs), dtype=np.int64),
        )
        strengths = BradleyTerryFit(comparisons).fit().values
    return GroupRewards(method, strengths.copy(), matrix, mean_win, strengths)
