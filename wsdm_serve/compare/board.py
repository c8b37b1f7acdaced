"""A leaderboard from comparisons: Elo-scale scores, bootstrap intervals resampling questions, win rates.

The score is the maximum-likelihood Bradley-Terry strength on the Elo scale (the baseline at 1000,
or the mean at 1000). Its interval is a percentile bootstrap: questions are drawn with replacement
(every judgement of a drawn question comes along, as many times as it was drawn), the model is
fitted again, and the 2.5th and 97.5th percentiles of each score are read off. Resampling questions,
not single judgements, keeps the judgements of one question together: they share its difficulty,
so treating them as independent would make the intervals too narrow.

The win rate is the plain mean outcome of a model's comparisons against the baseline (against every
other model when there is none), with an interval from the same resamples.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .bradley_terry import BradleyTerryFit, Comparisons, NoFiniteScores, elo_scores, single_threaded

CI_LEVEL = 0.95


@dataclass(frozen=True)
class Board:
    """One leaderboard, one entry per model, in ``models`` order (see :meth:`order` for ranked)."""

    models: tuple[str, ...]
    score: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    win_rate: np.ndarray
    win_rate_low: np.ndarray
    win_rate_high: np.ndarray
    n_judgements: np.ndarray
    coefficients: np.ndarray
    """Covariate coefficients of the point fit (style control), log-odds per unit of the feature."""
    baseline: str | None
    n_questions: int
    resamples: int
    dropped_resamples: int
    """Resamples without finite scores (a model that won or lost all its drawn comparisons), left out
    of the intervals."""

    def order(self) -> np.ndarray:
        """Model positions from the highest score down (ties keep the models' order)."""
        return np.argsort(-self.score, kind="stable")


def leaderboard(
    comparisons: Comparisons,
    *,
    baseline: str | None = None,
    resamples: int = 500,
    seed: int = 0,
    level: float = CI_LEVEL,
    progress: Callable[[int], None] | None = None,
) -> Board:
    """Scores, intervals and win rates of every model that takes part in ``comparisons``.

    Raises :class:`NoFiniteScores` when the data as given have no finite scores. ``progress`` is
    called with 1 after each resample.
    """
    anchor = None if baseline is None else comparisons.models.index(baseline)
    fit = BradleyTerryFit(comparisons, anchor)
    problem = fit.problem()
    if problem is not None:
        raise NoFiniteScores(problem)
    rng = np.random.default_rng(seed)
    n_questions = comparisons.n_questions
    draws = rng.multinomial(n_questions, np.full(n_questions, 1.0 / n_questions), size=resamples)
    with single_threaded():
        point = fit.fit()
        samples = np.full((resamples, comparisons.n_models), np.nan)
        for k in range(resamples):
            weights = draws[k].astype(np.float64)
            if fit.problem(weights) is None:
                samples[k] = fit.fit(weights).values
            if progress is not None:
                progress(1)
    kept = ~np.isnan(samples).all(axis=1)
    score = elo_scores(point.values, anchor)
    low, high = _interval(elo_scores(samples[kept], anchor), level, len(score))
    rate, rate_low, rate_high = win_rates(comparisons, anchor, draws, level)
    counts = np.bincount(comparisons.a, minlength=comparisons.n_models) + np.bincount(
        comparisons.b, minlength=comparisons.n_models
    )
    present = comparisons.present_models()
    select = np.zeros(comparisons.n_models, dtype=bool)
    select[present] = True
    return Board(
        models=tuple(comparisons.models[i] for i in present),
        score=score[select],
        ci_low=low[select],
        ci_high=high[select],
        win_rate=rate[select],
        win_rate_low=rate_low[select],
        win_rate_high=rate_high[select],
        n_judgements=counts[select],
        coefficients=point.coefficients,
        baseline=baseline,
        n_questions=n_questions,
        resamples=resamples,
        dropped_resamples=int((~kept).sum()),
    )


def _interval(samples: np.ndarray, level: float, width: int) -> tuple[np.ndarray, np.ndarray]:
    if not len(samples):
        return np.full(width, np.nan), np.full(width, np.nan)
    tail = (1.0 - level) / 2 * 100
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: a model with no draw
        low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return low, high


def win_rates(
    comparisons: Comparisons, anchor: int | None, draws: np.ndarray, level: float = CI_LEVEL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean outcome of each model against the anchor (or against all others), and its interval over
    the question resamples ``draws`` (resamples x questions). The anchor itself gets 0.5."""
    k, n_questions = comparisons.n_models, comparisons.n_questions
    # Every judgement seen from both sides: (model, opponent, how much the model won, question).
    model = np.concatenate([comparisons.a, comparisons.b])
    opponent = np.concatenate([comparisons.b, comparisons.a])
    won = np.concatenate([comparisons.outcome, 1.0 - comparisons.outcome])
    question = np.concatenate([comparisons.question, comparisons.question])
    keep = np.ones(len(model), dtype=bool) if anchor is None else opponent == anchor
    cell = model[keep] * n_questions + question[keep]
    total = np.bincount(cell, weights=won[keep], minlength=k * n_questions).reshape(k, n_questions)
    count = np.bincount(cell, minlength=k * n_questions).reshape(k, n_questions).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = total.sum(axis=1) / count.sum(axis=1)
        resampled = (total @ draws.T) / (count @ draws.T)  # models x resamples
    low, high = _interval(resampled.T, level, k) if len(draws) else (np.full(k, np.nan),) * 2
    if anchor is not None:
        rate[anchor], low[anchor], high[anchor] = 0.5, 0.5, 0.5
    return rate, low, high
