"""Metrics of a pairwise judge, in plain numpy.

Conventions used throughout: ``p_a`` is the probability that response A wins, ``labels`` is 0 when
A won and 1 when B won (the training data's convention), and the judge picks A only when
``p_a > 0.5`` (an exact tie goes to B, as the submission writer does).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LOG_LOSS_EPS = 1e-15


def _check(p_a: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p_a = np.asarray(p_a, dtype=np.float64)
    labels = np.asarray(labels)
    if p_a.shape != labels.shape or p_a.ndim != 1:
        raise ValueError(f"p_a {p_a.shape} and labels {labels.shape} must be 1-D and of one length")
    if len(p_a) == 0:
        raise ValueError("no rows to evaluate")
    return p_a, labels


def picks_a(p_a: np.ndarray) -> np.ndarray:
    return np.asarray(p_a, dtype=np.float64) > 0.5


def accuracy(p_a: np.ndarray, labels: np.ndarray) -> float:
    p_a, labels = _check(p_a, labels)
    return float(np.mean(picks_a(p_a) == (labels == 0)))


def log_loss(p_a: np.ndarray, labels: np.ndarray, eps: float = LOG_LOSS_EPS) -> float:
    """Mean negative log-likelihood of the winner, probabilities clipped to [eps, 1 - eps]."""
    p_a, labels = _check(p_a, labels)
    p_winner = np.where(labels == 0, p_a, 1.0 - p_a)
    return float(-np.mean(np.log(np.clip(p_winner, eps, 1.0 - eps))))


def brier(p_a: np.ndarray, labels: np.ndarray) -> float:
    """Binary Brier score on P(A wins): mean of (p_a - [A won])^2 (half the two-class sum)."""
    p_a, labels = _check(p_a, labels)
    return float(np.mean((p_a - (labels == 0)) ** 2))


def _bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bins over [0, 1]; bin k is [k/bins, (k+1)/bins), the last one includes 1."""
    return np.minimum((values * bins).astype(np.int64), bins - 1)


def expected_calibration_error(p_a: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE: confidence = max(p_a, 1 - p_a), equal-width bins over [0, 1].

    Sum over bins of (rows in bin / rows) * |accuracy in bin - mean confidence in bin|.
    """
    p_a, labels = _check(p_a, labels)
    confidence = np.maximum(p_a, 1.0 - p_a)
    correct = picks_a(p_a) == (labels == 0)
    index = _bin_index(confidence, bins)
    total = 0.0
    for k in np.unique(index):
        member = index == k
        total += member.sum() / len(p_a) * abs(correct[member].mean() - confidence[member].mean())
    return float(total)


def calibration_curve(p_a: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict]:
    """Reliability of P(A): per non-empty bin of p_a, its mean and the observed rate of A wins."""
    p_a, labels = _check(p_a, labels)
    index = _bin_index(p_a, bins)
    curve = []
    for k in range(bins):
        member = index == k
        if not member.any():
            continue
        curve.append(
            {
                "lo": k / bins,
                "hi": (k + 1) / bins,
                "n": int(member.sum()),
                "mean_p_a": float(p_a[member].mean()),
                "a_win_rate": float((labels[member] == 0).mean()),
            }
        )
    return curve


def accuracy_by_group(p_a: np.ndarray, labels: np.ndarray, groups: Sequence) -> dict[str, dict]:
    """Rows and accuracy per group value, groups in order of first appearance."""
    p_a, labels = _check(p_a, labels)
    groups = np.asarray([str(g) for g in groups], dtype=object)
    if len(groups) != len(p_a):
        raise ValueError("groups must have one value per row")
    correct = picks_a(p_a) == (labels == 0)
    result: dict[str, dict] = {}
    for group in dict.fromkeys(groups.tolist()):
        member = groups == group
        result[group] = {"n": int(member.sum()), "accuracy": float(correct[member].mean())}
    return result


def length_bucket_labels(n_tokens: np.ndarray, edges: Sequence[int]) -> list[str]:
    """Label each row with its token-count bucket: ``<e0``, ``e0-(e1-1)``, ..., ``>=eN``."""
    edges = sorted(int(e) for e in edges)
    names = [f"<{edges[0]}"] if edges else ["all"]
    names += [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)]
    if edges:
        names.append(f">={edges[-1]}")
    index = np.searchsorted(np.asarray(edges), np.asarray(n_tokens), side="right")
    return [names[i] for i in index]


def bucket_order(edges: Sequence[int]) -> list[str]:
    """All bucket names of ``length_bucket_labels`` in ascending order."""
    edges = sorted(int(e) for e in edges)
    return length_bucket_labels(np.asarray([0, *edges]), edges) if edges else ["all"]


def position_bias(forward_p_a: np.ndarray, swapped_p_a: np.ndarray | None, labels: np.ndarray) -> dict:
    """How much the judge prefers the first slot.

    ``forward_p_a`` is P(letter A) on the prompts as given; ``swapped_p_a`` is P(letter A) on the
    prompts with the responses swapped, i.e. the probability the swapped prompt gives to the
    original B. An unbiased judge has ``swapped_p_a == 1 - forward_p_a``: its mean P(letter A)
    over both orders is 0.5 and its two decisions always agree.
    """
    forward_p_a, labels = _check(forward_p_a, labels)
    result = {
        "label_a_rate": float((labels == 0).mean()),
        "mean_p_a_forward": float(forward_p_a.mean()),
        "first_slot_rate_forward": float(picks_a(forward_p_a).mean()),
        "mean_p_a_swapped": None,
        "mean_p_first_slot": None,
        "first_slot_rate": None,
        "swap_agreement": None,
    }
    if swapped_p_a is not None:
        swapped_p_a = np.asarray(swapped_p_a, dtype=np.float64)
        forward_pick_a = picks_a(forward_p_a)
        swapped_pick_original_a = ~picks_a(swapped_p_a)
        result.update(
            mean_p_a_swapped=float(swapped_p_a.mean()),
            mean_p_first_slot=float((forward_p_a.mean() + swapped_p_a.mean()) / 2),
            first_slot_rate=float((forward_pick_a.mean() + picks_a(swapped_p_a).mean()) / 2),
            swap_agreement=float((forward_pick_a == swapped_pick_original_a).mean()),
        )
    return result


def summary(p_a: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """The headline metrics of one set of probabilities."""
    p_a, labels = _check(p_a, labels)
    return {
        "n": len(p_a),
        "accuracy": accuracy(p_a, labels),
        "log_loss": log_loss(p_a, labels),
        "brier": brier(p_a, labels),
        "ece": expected_calibration_error(p_a, labels, bins),
        "mean_p_a": float(p_a.mean()),
    }
