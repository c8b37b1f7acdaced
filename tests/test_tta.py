"""Swap TTA: the reference's budget rule, row selection and averaging, on fixed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from wsdm_serve.tta import (
    TTAPlan,
    combine_swapped,
    least_confident,
    reference_time_budget,
    rows_to_rescore,
    softmax2,
    winners,
)


@pytest.mark.parametrize(
    ("n", "minutes"),
    [(25000, 720), (20001, 720), (20000, 576), (19999, 285), (8001, 285), (8000, 230), (500, 14), (10, 0)],
)
def test_reference_time_budget(n, minutes):
    assert reference_time_budget(n) == minutes


def test_rows_to_rescore_follows_the_reference_formula():
    # budget 285: margin 10 min; 285 - 100 elapsed - 10 = 175 min left for 50-minute passes -> 3.5 passes
    assert rows_to_rescore(10000, 285, 100, 50) == 10000  # capped at every row
    assert rows_to_rescore(10000, 285, 250, 50) == int((285 - 250 - 10) / 50 * 10000)  # 5000
    assert rows_to_rescore(10000, 285, 275.5, 50) == 0  # remain - margin < 0
    assert rows_to_rescore(10000, 285, 284.5, 50) == 0  # remain <= 1 minute
    assert rows_to_rescore(1000, 14, 12.5, 2) == int((14 - 12.5 - 10 / 285 * 14) / 2 * 1000)  # 504


def test_plan_modes():
    assert TTAPlan("none", None).count(100, 0, 1) == 0
    assert TTAPlan("all", None).count(100, 999, 1) == 100
    assert TTAPlan("budget", 60).count(100, 40, 20) == int((60 - 40 - 10 / 285 * 60) / 20 * 100)  # 89
    assert TTAPlan("budget", None).count(500, 0.5, 0.1) == 500  # 14 minutes for 500 rows


SCORES = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.5, 0.5], [0.48, 0.52]])


def test_least_confident_first_ties_in_input_order():
    assert least_confident(SCORES, 3).tolist() == [3, 4, 1]
    assert least_confident(np.array([[0.5, 0.5], [0.5, 0.5]]), 1).tolist() == [0]


def test_combine_maps_the_swapped_slots_back_and_averages():
    rows = np.array([1, 3])
    swapped = np.array([[0.7, 0.3], [0.4, 0.6]])  # slot A of the swapped prompt holds the original B
    combined = combine_swapped(SCORES, swapped, rows)
    np.testing.assert_allclose(combined[1], [(0.55 + 0.3) / 2, (0.45 + 0.7) / 2])
    np.testing.assert_allclose(combined[3], [(0.5 + 0.6) / 2, (0.5 + 0.4) / 2])
    np.testing.assert_array_equal(combined[[0, 2, 4]], SCORES[[0, 2, 4]])
    assert winners(combined) == ["model_a", "model_b", "model_b", "model_a", "model_b"]


def test_softmax2_and_ties_go_to_b():
    probs = softmax2(np.array([[2.0, 0.0], [1.0, 1.0], [-1000.0, 1000.0]]))
    np.testing.assert_allclose(probs[0], [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2))])
    assert winners(probs) == ["model_a", "model_b", "model_b"]
