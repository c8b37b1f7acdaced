"""Pairing and Bradley-Terry (wsdm_serve.compare): checked against an independent optimiser and against
data drawn from known strengths."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from wsdm_serve.compare import (
    BudgetPlanner,
    Comparisons,
    NoFiniteScores,
    all_pairs,
    baseline_pairs,
    circular_pairs,
    elo_scores,
    fit_bradley_terry,
    group_pairs,
    group_rewards,
    hard_outcomes,
    leaderboard,
    length_covariate,
    on_every_question,
    vote_outcomes,
)

NAMES = ("m0", "m1", "m2", "m3", "m4")


def drawn(strengths, n_questions, rng, pairs=None, soft=False):
    """Judgements of ``pairs`` (default all) on every question, outcomes drawn from Bradley-Terry."""
    rows = on_every_question(all_pairs(len(strengths)) if pairs is None else pairs, n_questions)
    q, a, b = rows.T
    p = 1.0 / (1.0 + np.exp(-(strengths[a] - strengths[b])))
    outcome = rng.beta(2 * p, 2 * (1 - p)) if soft else (rng.random(len(p)) < p).astype(float)
    names = tuple(f"m{i}" for i in range(len(strengths)))
    return Comparisons(names, a, b, outcome, q)


def direct_mle(c: Comparisons) -> np.ndarray:
    """The same likelihood maximised by scipy's BFGS, mean-centred: an independent check of the fit."""

    def loss(x):
        s = np.concatenate([[0.0], x])
        d = s[c.a] - s[c.b]
        return -(c.outcome * d - np.logaddexp(0.0, d)).sum()

    x = minimize(loss, np.zeros(c.n_models - 1), method="BFGS", options={"gtol": 1e-9}).x
    s = np.concatenate([[0.0], x])
    return s - s.mean()


@pytest.mark.parametrize("soft", [False, True])
def test_fit_is_the_maximum_likelihood(soft):
    rng = np.random.default_rng(1)
    c = drawn(np.array([0.0, 0.5, -0.4, 1.2, -1.0]), 60, rng, soft=soft)
    fitted = fit_bradley_terry(c).values
    assert abs(fitted.mean()) < 1e-9
    np.testing.assert_allclose(fitted, direct_mle(c), atol=1e-5)


def test_soft_outcome_is_wins_and_losses_in_proportion():
    """One judgement at P = 0.75 weighs like three wins and one loss (per unit weight)."""
    pairs = np.array([[0, 1], [1, 2], [0, 2]])
    soft = Comparisons(NAMES[:3], pairs[:, 0], pairs[:, 1], np.array([0.75, 0.6, 0.9]), np.arange(3))
    hard_a = np.repeat(pairs[:, 0], 20)
    hard_b = np.repeat(pairs[:, 1], 20)
    wins = np.concatenate([np.r_[np.ones(k), np.zeros(20 - k)] for k in (15, 12, 18)])
    hard = Comparisons(NAMES[:3], hard_a, hard_b, wins, np.arange(60))
    np.testing.assert_allclose(fit_bradley_terry(soft).values, fit_bradley_terry(hard).values, atol=1e-6)


def test_elo_scale_is_400_points_per_factor_10_of_odds():
    c = Comparisons(NAMES[:2], np.array([0]), np.array([1]), np.array([10 / 11]), np.array([0]))
    strengths = fit_bradley_terry(c, anchor=1).values
    np.testing.assert_allclose(elo_scores(strengths, anchor=1), [1400.0, 1000.0], atol=1e-4)
    np.testing.assert_allclose(elo_scores(strengths), [1200.0, 800.0], atol=1e-4)


def test_hard_outcomes_ties_and_votes():
    p = np.array([0.9, 0.1, 0.5, 0.53, 0.47])
    np.testing.assert_array_equal(hard_outcomes(p), [1, 0, 0.5, 1, 0])
    np.testing.assert_array_equal(hard_outcomes(p, tie_margin=0.05), [1, 0, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(
        vote_outcomes(["model_a", "tie", "model_b", "tie (bothbad)"]), [1, 0.5, 0, 0.5]
    )
    with pytest.raises(ValueError, match=r"position 1: winner 'A'"):
        vote_outcomes(["model_a", "A"])


def test_scores_that_are_not_finite_are_refused_naming_the_models():
    never_lost = Comparisons(
        NAMES[:3], np.array([0, 0, 1]), np.array([1, 2, 2]), np.array([1.0, 1.0, 0.5]), np.arange(3)
    )
    with pytest.raises(NoFiniteScores, match="m0 never lost to the other models"):
        fit_bradley_terry(never_lost)
    apart = Comparisons(NAMES[:4], np.array([0, 2]), np.array([1, 3]), np.array([0.6, 0.4]), np.arange(2))
    with pytest.raises(NoFiniteScores, match="m0, m1 never met the other models"):
        fit_bradley_terry(apart)


def test_leaderboard_intervals_cover_the_truth_and_the_baseline_is_fixed():
    truth = np.array([0.0, 0.4, -0.3, 0.9, -0.8])
    c = drawn(truth, 200, np.random.default_rng(3), pairs=baseline_pairs(5, 0))
    board = leaderboard(c, baseline="m0", resamples=200, seed=7)
    assert board.models == NAMES
    assert (board.score[0], board.ci_low[0], board.ci_high[0]) == (1000.0, 1000.0, 1000.0)
    assert np.all(board.ci_low <= board.score) and np.all(board.score <= board.ci_high)
    true_elo = elo_scores(truth, anchor=0)
    assert np.all((board.ci_low <= true_elo) & (true_elo <= board.ci_high))
    assert list(np.argsort(-board.score)) == list(np.argsort(-truth))
    # The win rate is the plain mean outcome against the baseline, with the baseline at 0.5.
    for m in range(1, 5):
        assert board.win_rate[m] == pytest.approx(c.outcome[c.a == m].mean())
        assert board.win_rate_low[m] < board.win_rate[m] < board.win_rate_high[m]
    assert board.win_rate[0] == 0.5
    assert board.n_judgements.tolist() == [800, 200, 200, 200, 200]
    again = leaderboard(c, baseline="m0", resamples=200, seed=7)
    np.testing.assert_array_equal(again.ci_low, board.ci_low)


def test_resamples_without_finite_scores_are_counted_not_used():
    # Few questions, hard outcomes: some resamples draw only questions where m1 won.
    c = Comparisons(
        NAMES[:2], np.zeros(4, int), np.ones(4, int), np.array([1.0, 1.0, 1.0, 0.0]), np.arange(4)
    )
    board = leaderboard(c, resamples=100, seed=0)
    assert 0 < board.dropped_resamples < 100
    assert np.isfinite(board.ci_low).all()


def test_length_control_removes_a_preference_for_length():
    """Three equally good models whose answers differ in length; the judge prefers the longer one.
    Without style control the wordy model leads by far; with the length covariate the preference
    goes to the coefficient and the models come out close."""
    rng = np.random.default_rng(5)
    rows = on_every_question(all_pairs(3), 300)
    lengths = np.column_stack(
        [rng.integers(200, 800, 300), rng.integers(50, 400, 300), rng.integers(100, 600, 300)]
    )
    q, a, b = rows.T
    feature = length_covariate(lengths[q, a], lengths[q, b])
    outcome = (rng.random(len(q)) < 1 / (1 + np.exp(-1.5 * feature[:, 0]))).astype(float)
    plain = Comparisons(NAMES[:3], a, b, outcome, q)
    styled = Comparisons(NAMES[:3], a, b, outcome, q, covariates=feature)
    spread_plain = np.ptp(fit_bradley_terry(plain).values)
    fit = fit_bradley_terry(styled)
    assert spread_plain > 0.8
    assert np.ptp(fit.values) < 0.25 * spread_plain
    assert fit.coefficients[0] > 1.0


def test_pair_schedules():
    assert baseline_pairs(4, 2).tolist() == [[0, 2], [1, 2], [3, 2]]
    assert all_pairs(4).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert circular_pairs(4).tolist() == [[0, 1], [1, 2], [2, 3], [3, 0]]
    assert circular_pairs(2).tolist() == [[0, 1]] and circular_pairs(1).shape == (0, 2)
    assert group_pairs("vs-reference", 3).tolist() == [[0, 3], [1, 3], [2, 3]]
    rows = on_every_question(baseline_pairs(3, 0), 2)
    assert rows.tolist() == [[0, 1, 0], [0, 2, 0], [1, 1, 0], [1, 2, 0]]


def test_budget_schedule_spends_its_budget_on_close_pairs():
    truth = np.array([0.0, 0.05, 2.0, 4.0])  # m0 and m1 nearly tied; the rest far apart
    rng = np.random.default_rng(0)
    world = drawn(truth, 100, rng)
    lookup = {
        (q, a, b): o for q, a, b, o in zip(world.question, world.a, world.b, world.outcome, strict=True)
    }

    def run(seed):
        planner, rows, judged = BudgetPlanner(4, 100, 80, seed=seed), [], None
        while len(batch := planner.next_round(judged)):
            rows += batch.tolist()
            q, a, b = np.array(rows).T
            judged = Comparisons(world.models, a, b, np.array([lookup[t] for t in map(tuple, rows)]), q)
        return rows

    rows = run(1)
    assert len(rows) == 80 and len({tuple(r) for r in rows}) == 80
    assert run(1) == rows
    pairs = [(a, b) for _, a, b in rows]
    assert pairs.count((0, 1)) > len(rows) / 2  # the near tie takes most of the budget
    assert pairs.count((0, 3)) + pairs.count((1, 3)) <= 6  # the far pairs little beyond the warm-up


def test_group_rewards():
    strengths = np.array([0.3, -0.5, 1.1, -0.9])
    pairs = group_pairs("round-robin", 4)
    p = 1 / (1 + np.exp(-(strengths[pairs[:, 0]] - strengths[pairs[:, 1]])))
    robin = group_rewards("round-robin", 4, p)
    np.testing.assert_allclose(robin.rewards, strengths - strengths.mean(), atol=1e-6)
    np.testing.assert_allclose(robin.matrix + robin.matrix.T, np.where(np.eye(4), np.nan, 1.0))
    assert robin.mean_win[2] == pytest.approx(np.nanmean(robin.matrix[2]))
    circle = group_pairs("circular", 4)
    pc = 1 / (1 + np.exp(-(strengths[circle[:, 0]] - strengths[circle[:, 1]])))
    np.testing.assert_allclose(
        group_rewards("circular", 4, pc).rewards, strengths - strengths.mean(), atol=1e-6
    )
    reference = group_rewards("vs-reference", 3, np.array([0.2, 0.7, 0.5]))
    assert reference.rewards.tolist() == [0.2, 0.7, 0.5] and reference.strengths is None
    assert reference.matrix.shape == (4, 4) and reference.matrix[3, 1] == pytest.approx(0.3)
    certain = group_rewards("round-robin", 2, np.array([1.0]))
    assert np.isfinite(certain.rewards).all() and certain.rewards[0] > certain.rewards[1]
