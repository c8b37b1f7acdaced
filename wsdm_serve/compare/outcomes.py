"""What one comparison says: soft outcomes (a probability), hard ones (1, 0, a tie as 1/2), votes.

An outcome is always "how much the first of the two won": P(first wins) for the judge, 1, 0 or 0.5
for a decision. The Bradley-Terry fit takes either, so the judge's probabilities and people's votes
give boards on the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VOTE_OUTCOMES = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5, "both_bad": 0.5}
"""Arena vote labels: ``winner`` as LMArena's data spells it (a tie where both are bad is a tie)."""


def hard_outcomes(p_first: np.ndarray, tie_margin: float = 0.0) -> np.ndarray:
    """1 where the first won, 0 where it lost, 0.5 for a tie: a probability within ``tie_margin`` of
    one half (an exact 0.5 is always a tie)."""
    if not 0 <= tie_margin < 0.5:
        raise ValueError(f"tie margin {tie_margin} must be in [0, 0.5)")
    p_first = np.asarray(p_first, dtype=np.float64)
    outcome = np.where(p_first > 0.5, 1.0, 0.0)
    outcome[np.abs(p_first - 0.5) <= tie_margin] = 0.5
    return outcome


def vote_outcomes(winners: Sequence) -> np.ndarray:
    """Outcomes of arena votes (``model_a``, ``model_b``, ``tie``); ValueError names the first
    position (0-based) whose label is none of them."""
    outcome = np.empty(len(winners), dtype=np.float64)
    for position, winner in enumerate(winners):
        value = VOTE_OUTCOMES.get(winner) if isinstance(winner, str) else None
        if value is None:
            raise ValueError(
                f"position {position}: winner {winner!r} is none of {', '.join(map(repr, VOTE_OUTCOMES))}"
            )
        outcome[position] = value
    return outcome


def length_covariate(length_first: np.ndarray, length_second: np.ndarray) -> np.ndarray:
    """Arena-Hard's length feature, (len_1 - len_2) / (len_1 + len_2), scaled to unit root mean square.

    The scale makes the coefficient comparable across benchmarks; unlike Arena-Hard the feature is
    not mean-centred, so the fit does not depend on which response of a pair is called first.
    Returns an (n, 1) array for :class:`~wsdm_serve.compare.bradley_terry.Comparisons`.
    """
    first = np.asarray(length_first, dtype=np.float64)
    second = np.asarray(length_second, dtype=np.float64)
    total = first + second
    feature = np.divide(first - second, total, out=np.zeros_like(total), where=total > 0)
    scale = float(np.sqrt(np.mean(feature**2))) if feature.size else 0.0
    if scale > 0:
        feature = feature / scale
    return feature[:, None]
