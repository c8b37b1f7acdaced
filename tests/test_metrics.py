"""Metrics against values worked out by hand on a fixed six-row table.

The table (label 0 = A won, 1 = B won; s = P(letter A) on the swapped prompt):

    row  label  p_a   s     TTA P(A) = (p_a + 1 - s) / 2   n_tokens  language
    r1   A      0.85  0.30  0.775                          100       en
    r2   A      0.65  0.70  0.475                          300       en
    r3   B      0.35  0.40  0.475                          600       de
    r4   B      0.75  0.85  0.450                          150       de
    r5   A      0.45  0.30  0.575                          700       en
    r6   B      0.15  0.90  0.125                          250       fr

Every probability and confidence lies inside a bin, never on a bin edge, so the hand binning is
unambiguous. The expected numbers below were computed by hand from this table.
"""

from __future__ import annotations

import numpy as np
import pytest

from wsdm_serve import metrics

LABELS = np.array([0, 0, 1, 1, 0, 1])
P_A = np.array([0.85, 0.65, 0.35, 0.75, 0.45, 0.15])
S = np.array([0.30, 0.70, 0.40, 0.85, 0.30, 0.90])
TTA = np.array([0.775, 0.475, 0.475, 0.450, 0.575, 0.125])
N_TOKENS = np.array([100, 300, 600, 150, 700, 250])
LANGUAGES = ["en", "en", "de", "de", "en", "fr"]

# Forward: picks A, A, B, A, B, B -> right, right, right, wrong, wrong, right.
# P(winner) = .85 .65 .65 .25 .45 .85; ln: -.1625189 -.4307829 -.4307829 -1.3862944 -.7985077 -.1625189
# (p_a - [A won])^2 = .0225 .1225 .1225 .5625 .3025 .0225 (sum 1.155)
# ECE: bins of confidence 5 {r5: acc 0, conf .55}, 6 {r2, r3: 1, .65}, 7 {r4: 0, .75}, 8 {r1, r6: 1, .85}
#   = (.55 + 2 * .35 + .75 + 2 * .15) / 6 = 2.30 / 6
FORWARD = {
    "accuracy": 4 / 6,
    "log_loss": 3.3714057 / 6,
    "brier": 1.155 / 6,
    "ece": 2.30 / 6,
    "mean_p_a": 3.2 / 6,
}
# TTA: picks A, B, B, B, A, B -> right, wrong, right, right, right, right.
# P(winner) = .775 .475 .525 .55 .575 .875; -ln sum = .2548922 + .7444405 + .6443570 + .5978370
#   + .5533852 + .1335314 = 2.9284433
# squares = .050625 .275625 .225625 .2025 .180625 .015625 (sum .950625)
# ECE: bin 5 {r2, r3, r4, r5: acc 3/4, mean conf (.525 + .525 + .55 + .575) / 4 = .54375}
#        -> 4/6 * .20625 = .1375
#      bin 7 {r1: 1, .775} -> .225 / 6 = .0375, bin 8 {r6: 1, .875} -> .125 / 6 = .0208333
WITH_TTA = {
    "accuracy": 5 / 6,
    "log_loss": 2.9284433 / 6,
    "brier": 0.950625 / 6,
    "ece": 0.1375 + 0.0375 + 0.0208333,
    "mean_p_a": 2.875 / 6,
}
# Position bias: forward picks A in r1, r2, r4 (3/6); swapped prompts pick letter A where s > .5:
# r2, r4, r6 (3/6). Original A chosen forward: r1 r2 r4; swapped (s < .5): r1 r3 r5 -> agree in
# r1 and r6 only = 2/6. Mean s = 3.45 / 6.
POSITION = {
    "label_a_rate": 0.5,
    "mean_p_a_forward": 3.2 / 6,
    "first_slot_rate_forward": 0.5,
    "mean_p_a_swapped": 3.45 / 6,
    "mean_p_first_slot": (3.2 / 6 + 3.45 / 6) / 2,
    "first_slot_rate": 0.5,
    "swap_agreement": 2 / 6,
}
BY_LANGUAGE_FORWARD = {"en": (3, 2 / 3), "de": (2, 0.5), "fr": (1, 1.0)}
BY_LANGUAGE_TTA = {"en": (3, 2 / 3), "de": (2, 1.0), "fr": (1, 1.0)}
EDGES = (200, 500)
BY_LENGTH_FORWARD = {"<200": (2, 0.5), "200-499": (2, 1.0), ">=500": (2, 0.5)}
BY_LENGTH_TTA = {"<200": (2, 1.0), "200-499": (2, 0.5), ">=500": (2, 1.0)}


@pytest.mark.parametrize(("p_a", "expected"), [(P_A, FORWARD), (TTA, WITH_TTA)], ids=["forward", "tta"])
def test_summary_matches_hand_computation(p_a, expected):
    result = metrics.summary(p_a, LABELS, bins=10)
    assert result["n"] == 6
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-6), name


def test_position_bias_matches_hand_computation():
    result = metrics.position_bias(P_A, S, LABELS)
    for name, value in POSITION.items():
        assert result[name] == pytest.approx(value, abs=1e-9), name


def test_position_bias_without_swapped_rows_reports_only_the_forward_side():
    result = metrics.position_bias(P_A, None, LABELS)
    assert result["mean_p_a_forward"] == pytest.approx(3.2 / 6)
    assert result["swap_agreement"] is None and result["mean_p_a_swapped"] is None


def assert_groups(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for group, (n, accuracy) in expected.items():
        assert actual[group]["n"] == n, group
        assert actual[group]["accuracy"] == pytest.approx(accuracy), group


def test_accuracy_by_group_and_length_buckets():
    assert_groups(metrics.accuracy_by_group(P_A, LABELS, LANGUAGES), BY_LANGUAGE_FORWARD)
    assert_groups(metrics.accuracy_by_group(TTA, LABELS, LANGUAGES), BY_LANGUAGE_TTA)
    buckets = metrics.length_bucket_labels(N_TOKENS, EDGES)
    assert buckets == ["<200", "200-499", ">=500", "<200", ">=500", "200-499"]
    assert metrics.bucket_order(EDGES) == ["<200", "200-499", ">=500"]
    assert_groups(
        metrics.accuracy_by_group(P_A, LABELS, buckets),
        {k: BY_LENGTH_FORWARD[k] for k in ["<200", "200-499", ">=500"]},
    )
    by_length = metrics.accuracy_by_group(TTA, LABELS, buckets)
    assert_groups(by_length, BY_LENGTH_TTA)


def test_bucket_edges_are_inclusive_lower_bounds():
    assert metrics.length_bucket_labels(np.array([199, 200, 499, 500]), EDGES) == [
        "<200",
        "200-499",
        "200-499",
        ">=500",
    ]


def test_calibration_curve_of_p_a():
    curve = metrics.calibration_curve(P_A, LABELS, bins=10)
    # One row per occupied bin of p_a: .15 (B won), .35 (B), .45 (A), .65 (A), .75 (B), .85 (A).
    assert [(round(c["lo"], 1), c["n"], c["a_win_rate"]) for c in curve] == [
        (0.1, 1, 0.0),
        (0.3, 1, 0.0),
        (0.4, 1, 1.0),
        (0.6, 1, 1.0),
        (0.7, 1, 0.0),
        (0.8, 1, 1.0),
    ]
    assert [c["mean_p_a"] for c in curve] == pytest.approx([0.15, 0.35, 0.45, 0.65, 0.75, 0.85])


def test_log_loss_clips_certain_mistakes():
    # P(winner) = 0 is clipped to 1e-15: -ln(1e-15) = 34.5387764.
    assert metrics.log_loss(np.array([1.0]), np.array([1])) == pytest.approx(34.5387764, abs=1e-6)
    assert metrics.log_loss(np.array([1.0]), np.array([0])) == pytest.approx(1e-15, abs=1e-12)


def test_exact_half_counts_as_a_vote_for_b():
    assert metrics.accuracy(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    # Confidence 0.5 sits in bin 5 and the pick (B) is right for the second row only.
    assert metrics.expected_calibration_error(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.0)


def test_shape_errors_are_reported():
    with pytest.raises(ValueError, match="one length"):
        metrics.accuracy(np.array([0.2, 0.3]), np.array([0]))
    with pytest.raises(ValueError, match="no rows"):
        metrics.brier(np.array([]), np.array([]))
