"""``--pairs budget``: which (question, model pair) to judge next when judging every pair is too much.

The aim is the ranking that all pairs would give, from a fraction of the judgements. Pairs far apart
in strength are settled by transitivity after a few comparisons; the budget goes where the order of
two models is still in doubt. The schedule runs in rounds:

1. Warm-up: models in a random cycle, each next to the following one, on a few questions (a few
   judgements per model, and a connected comparison graph).
2. Each round: fit Bradley-Terry to everything judged so far (a weak Gaussian prior keeps this
   planning fit finite; the final scores are unregularised), with its covariance from the Fisher
   information. For every pair (i, j), with d the estimated difference and v its variance, the
   value of one more judgement is

       P(order of i and j is wrong) x (sd(d) now - sd(d) after one more judgement)
       = Phi(-|d| / sqrt v) x (sqrt v - sqrt(1 / (1/v + p(1-p)))),   p = sigmoid(d).

   The round's judgements are handed out greedily, highest value first, updating v of the pair that
   got one, so a round spreads over the pairs in doubt instead of piling onto one. Each judgement of
   a pair takes a question that pair has not been judged on (a fixed random order per pair).

The second factor is the rule Chatbot Arena uses to sample pairs (the expected reduction of a pair's
confidence-interval width; Chiang et al., 2024, "Chatbot Arena: An Open Platform for Evaluating LLMs
by Human Preference", section 5, arXiv:2403.04132). The first factor restricts it to pairs whose
order is uncertain, the idea of active ranking (Heckel, Shah, Ramchandran and Wainwright, 2019,
"Active ranking from pairwise comparisons and when parametric assumptions do not help", Annals of
Statistics 47(6)): a pair already separated needs no more comparisons. The schedule is a pure
function of the seed and the outcomes, so a resumed run asks for the same judgements again.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from .bradley_terry import BradleyTerryFit, Comparisons, single_threaded
from .schedule import all_pairs

PLANNING_C = 10.0
"""Inverse strength of the planning fit's Gaussian prior (scikit-learn's C): weak, only there so a
model that has not lost yet gets a finite estimate to plan with."""
WARMUP_SHARE = 0.1
ROUNDS = 20


class BudgetPlanner:
    """Rounds of (question, first, second) to judge, at most ``max_judgements`` in all.

    Call :meth:`next_round` with the comparisons judged so far (every judgement of the earlier
    rounds, any order) until it returns an empty array.
    """

    def __init__(
        self,
        n_models: int,
        n_questions: int,
        max_judgements: int,
        *,
        seed: int = 0,
        round_size: int | None = None,
    ) -> None:
        if n_models < 2 or n_questions < 1:
            raise ValueError("a budget schedule needs two models and one question")
        if max_judgements < 1:
            raise ValueError("max_judgements must be >= 1")
        self.n_models, self.n_questions = n_models, n_questions
        self.pairs = all_pairs(n_models)
        self.budget = min(int(max_judgements), len(self.pairs) * n_questions)
        self.round_size = round_size or max(n_models, math.ceil(self.budget / ROUNDS))
        self.rng = np.random.default_rng(seed)
        self._pair_index = {(int(a), int(b)): k for k, (a, b) in enumerate(self.pairs)}
        self._question_order = [self.rng.permutation(n_questions) for _ in range(len(self.pairs))]
        self._used = np.zeros(len(self.pairs), dtype=np.int64)
        self.scheduled = 0

    def _take(self, pair: int) -> list[int]:
        a, b = self.pairs[pair]
        question = int(self._question_order[pair][self._used[pair]])
        self._used[pair] += 1
        self.scheduled += 1
        return [question, int(a), int(b)]

    def next_round(self, judged: Comparisons | None) -> np.ndarray:
        """The next round's judgements, question-major; empty once the budget is spent."""
        left = self.budget - self.scheduled
        if left <= 0:
            return np.zeros((0, 3), dtype=np.int64)
        chosen = (
            self._warmup(left) if self.scheduled == 0 else self._greedy(judged, min(left, self.round_size))
        )
        batch = np.asarray(chosen, dtype=np.int64).reshape(-1, 3)
        return batch[np.lexsort((batch[:, 2], batch[:, 1], batch[:, 0]))]

    def _warmup(self, left: int) -> list[list[int]]:
        """Random cycles through the models, until the warm-up share of the budget is taken."""
        size = min(left, max(self.n_models, math.ceil(WARMUP_SHARE * self.budget)))
        chosen: list[list[int]] = []
        while len(chosen) < size:
            order = self.rng.permutation(self.n_models)
            for first, second in zip(order, np.roll(order, -1), strict=True):
                pair = self._pair_index[(min(first, second), max(first, second))]
                if len(chosen) < size and self._used[pair] < self.n_questions:
                    chosen.append(self._take(pair))
            if self.n_models == 2 and self._used[0] >= self.n_questions:
                break
        return chosen

    def _greedy(self, judged: Comparisons | None, size: int) -> list[list[int]]:
        strengths, covariance = self._estimate(judged)
        a, b = self.pairs[:, 0], self.pairs[:, 1]
        d = strengths[a] - strengths[b]
        variance = covariance[a, a] + covariance[b, b] - 2 * covariance[a, b]
        variance = np.maximum(variance, 1e-12)
        p = 1.0 / (1.0 + np.exp(-d))
        information = p * (1.0 - p)
        heap = [
            (-_value(d[k], variance[k], information[k]), k)
            for k in range(len(self.pairs))
            if self._used[k] < self.n_questions
        ]
        heapq.heapify(heap)
        chosen: list[list[int]] = []
        while heap and len(chosen) < size:
            _, k = heapq.heappop(heap)
            chosen.append(self._take(k))
            variance[k] = 1.0 / (1.0 / variance[k] + information[k])
            if self._used[k] < self.n_questions:
                heapq.heappush(heap, (-_value(d[k], variance[k], information[k]), k))
        return chosen

    def _estimate(self, judged: Comparisons | None) -> tuple[np.ndarray, np.ndarray]:
        """Planning strengths (weak prior) and their covariance (inverse Fisher information)."""
        k = self.n_models
        if judged is None or not len(judged):
            return np.zeros(k), np.eye(k)
        fit = BradleyTerryFit(judged, anchor=None, c=PLANNING_C)
        with single_threaded():
            strengths = np.nan_to_num(fit.fit().values)
        won, lost = fit.pair_weights()
        d = strengths[fit.pair_a] - strengths[fit.pair_b]
        p = 1.0 / (1.0 + np.exp(-d))
        weight = (won + lost) * p * (1.0 - p)
        information = np.eye(k) / PLANNING_C
        np.add.at(information, (fit.pair_a, fit.pair_a), weight)
        np.add.at(information, (fit.pair_b, fit.pair_b), weight)
        np.add.at(information, (fit.pair_a, fit.pair_b), -weight)
        np.add.at(information, (fit.pair_b, fit.pair_a), -weight)
        return strengths, np.linalg.inv(information)


def _value(d: float, variance: float, information: float) -> float:
    """P(order wrong) x (reduction of the difference's sd by one more judgement)."""
    sd = math.sqrt(variance)
    after = math.sqrt(1.0 / (1.0 / variance + information))
    wrong = 0.5 * math.erfc(abs(d) / sd / math.sqrt(2.0))
    return wrong * (sd - after)
