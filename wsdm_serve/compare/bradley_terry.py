"""Bradley-Terry strengths by unregularised maximum likelihood, fitted with scikit-learn.

The model: P(a beats b) = sigmoid(s_a - s_b + beta . x_ab), with x_ab optional covariates of the pair
(style control). An outcome o in [0, 1] (a probability, or 1 / 0 / 0.5) contributes
o log p + (1 - o) log(1 - p), which is a weighted logistic regression with the judgement as two rows:
"won" with weight o and "lost" with weight 1 - o. scikit-learn's ``LogisticRegression`` without a
penalty (``C=inf``) and without an intercept fits it, as FastChat and Arena-Hard-Auto v0.1 did;
docs/ranking.md says why this library.

Strengths are identified up to a constant: the anchor model's column is left out of the design
(its strength is 0), and without an anchor the strengths are shifted to mean 0 afterwards. Without
covariates the judgements of one ordered pair are summed into two rows, so a fit costs the same for
a thousand questions as for one, and a bootstrap resample is a new set of weights on those rows.

A finite maximum exists only if every split of the models into two sets has a win in each
direction across it (Ford, 1957), that is if the "won against" graph is strongly connected; a model
that never lost has strength +infinity. :func:`finite_scores_problem` checks it before fitting.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

ELO_CENTRE = 1000.0
ELO_POINTS_PER_FACTOR_10 = 400.0
"""The Elo scale of LMArena and Arena-Hard: 400 points per factor 10 of odds, centred on 1000."""


@dataclass(frozen=True)
class Comparisons:
    """Judgements of pairs of models, as integer indices into ``models``.

    ``outcome[j]`` is how much ``a[j]`` won against ``b[j]`` (a probability, or 1 / 0 / 0.5);
    ``question[j]`` (0 .. n_questions-1) groups judgements for the bootstrap, which resamples
    questions; ``covariates`` (n, k) are features of the pair, first minus second (style control).
    """

    models: tuple[str, ...]
    a: np.ndarray
    b: np.ndarray
    outcome: np.ndarray
    question: np.ndarray
    covariates: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.outcome)
        for name in ("a", "b", "question"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"comparisons: {name} has {len(getattr(self, name))} entries for {n} outcomes"
                )
        if self.covariates is not None and self.covariates.shape[0] != n:
            raise ValueError("comparisons: covariates need one row per outcome")
        if n and (np.any(self.a == self.b) or min(self.a.min(), self.b.min()) < 0):
            raise ValueError("comparisons: a model compared with itself, or a negative index")
        if n and max(self.a.max(), self.b.max()) >= len(self.models):
            raise ValueError("comparisons: a model index beyond the list of models")
        if n and not (np.all(self.outcome >= 0) and np.all(self.outcome <= 1)):
            raise ValueError("comparisons: outcomes must lie in [0, 1]")

    @classmethod
    def from_names(
        cls,
        model_a,
        model_b,
        outcome,
        question=None,
        covariates: np.ndarray | None = None,
        models=None,
    ) -> Comparisons:
        """From model names per judgement; ``question`` labels (any hashable) default to one per
        judgement; ``models`` fixes the order of the index space (default: sorted names)."""
        model_a, model_b = list(model_a), list(model_b)
        names = tuple(models) if models is not None else tuple(sorted(set(model_a) | set(model_b)))
        index = {name: i for i, name in enumerate(names)}
        unknown = (set(model_a) | set(model_b)) - set(index)
        if unknown:
            raise ValueError(f"comparisons: models {sorted(unknown)} are not in the list of models")
        if question is None:
            question_index = np.arange(len(model_a), dtype=np.int64)
        else:
            question_index = np.unique(np.asarray(list(question), dtype=object), return_inverse=True)[1]
        return cls(
            models=names,
            a=np.array([index[m] for m in model_a], dtype=np.int64),
            b=np.array([index[m] for m in model_b], dtype=np.int64),
            outcome=np.asarray(outcome, dtype=np.float64),
            question=np.asarray(question_index, dtype=np.int64).reshape(-1),
            covariates=None if covariates is None else np.asarray(covariates, dtype=np.float64),
        )

    def __len__(self) -> int:
        return len(self.outcome)

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def n_questions(self) -> int:
        return int(self.question.max()) + 1 if len(self.question) else 0

    def select(self, mask: np.ndarray) -> Comparisons:
        """The judgements where ``mask`` holds, models kept as they are, questions renumbered."""
        question = np.unique(self.question[mask], return_inverse=True)[1].astype(np.int64)
        return Comparisons(
            models=self.models,
            a=self.a[mask],
            b=self.b[mask],
            outcome=self.outcome[mask],
            question=question.reshape(-1),
            covariates=None if self.covariates is None else self.covariates[mask],
        )

    def present_models(self) -> np.ndarray:
        """Indices of the models that take part in at least one judgement."""
        return np.unique(np.concatenate([self.a, self.b]))


@dataclass(frozen=True)
class Strengths:
    """Log-odds strengths (natural logarithm), anchored (see module doc), and covariate coefficients."""

    values: np.ndarray
    coefficients: np.ndarray


def elo_scores(strengths: np.ndarray, anchor: int | None = None) -> np.ndarray:
    """The Elo scale: the anchor model at 1000, or (without one) the mean at 1000.

    Works on one strength vector (K,) or on a stack of them (B, K), each row anchored on its own.
    """
    strengths = np.asarray(strengths, dtype=np.float64)
    centre = strengths.mean(axis=-1, keepdims=True) if anchor is None else strengths[..., [anchor]]
    return ELO_CENTRE + ELO_POINTS_PER_FACTOR_10 / np.log(10.0) * (strengths - centre)


def won_against(n_models: int, a: np.ndarray, b: np.ndarray, won: np.ndarray, lost: np.ndarray) -> np.ndarray:
    """(K, K) boolean: ``[i, j]`` when i has a win of positive weight against j (either order)."""
    graph = np.zeros((n_models, n_models), dtype=bool)
    graph[a[won > 0], b[won > 0]] = True
    graph[b[lost > 0], a[lost > 0]] = True
    return graph


def finite_scores_problem(graph: np.ndarray, names: tuple[str, ...], present: np.ndarray) -> str | None:
    """Why the maximum-likelihood scores of the ``present`` models are not finite, or None if they are.

    ``graph`` is :func:`won_against`'s matrix. The scores are finite exactly when the graph restricted
    to the present models is strongly connected; otherwise one group of models never lost to the rest
    (or never met them), and the sentence names it.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    sub = graph[np.ix_(present, present)]
    if len(present) < 2:
        return "fewer than two models were compared"
    count, label = connected_components(csr_matrix(sub), directed=True, connection="weak")
    if count > 1:
        group = [names[present[i]] for i in np.flatnonzero(label == label[0])]
        return f"{_list(group)} never met the other models"
    count, label = connected_components(csr_matrix(sub), directed=True, connection="strong")
    if count == 1:
        return None
    for component in range(count):
        inside = label == component
        beaten_by_outside = sub[np.ix_(~inside, inside)].any()
        if not beaten_by_outside:
            group = [names[present[i]] for i in np.flatnonzero(inside)]
            return f"{_list(group)} never lost to the other models"
    return "the comparisons have no finite maximum"  # unreachable: a condensation has a source


def _list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return shown


class BradleyTerryFit:
    """The design of one set of comparisons, fitted once or many times under different weights.

    ``fit(question_weights)`` fits with each judgement weighted by its question's weight (a
    bootstrap resample's counts; all ones for the data as given). ``c`` is scikit-learn's inverse
    penalty: infinite (no penalty) for scores; a finite value only where a rough, always-finite
    estimate is wanted (planning which pairs to judge next).
    """

    def __init__(self, comparisons: Comparisons, anchor: int | None = None, c: float = np.inf) -> None:
        from scipy.sparse import csr_matrix

        self.comparisons = comparisons
        self.anchor = anchor
        self.c = c
        k = comparisons.n_models
        self.present = comparisons.present_models()
        # Columns: the present models except the reference one (anchor if given, else the first).
        if anchor is not None and anchor not in self.present:
            raise ValueError(f"comparisons: the anchor {comparisons.models[anchor]!r} takes part in none")
        reference = anchor if anchor is not None else (int(self.present[0]) if len(self.present) else 0)
        self.columns = np.array([m for m in self.present if m != reference], dtype=np.int64)
        self._column_of = np.full(k, -1, dtype=np.int64)
        self._column_of[self.columns] = np.arange(len(self.columns))
        key = comparisons.a * k + comparisons.b
        self.pair_keys, pair_of = np.unique(key, return_inverse=True)
        self.pair_a, self.pair_b = self.pair_keys // k, self.pair_keys % k
        pair_of = pair_of.reshape(-1)
        shape = (len(self.pair_keys), max(comparisons.n_questions, 1))
        outcome = comparisons.outcome
        self._won = csr_matrix((outcome, (pair_of, comparisons.question)), shape=shape)
        self._lost = csr_matrix((1.0 - outcome, (pair_of, comparisons.question)), shape=shape)
        self._aggregate = comparisons.covariates is None
        self._model = None

    def pair_weights(self, question_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Summed won and lost weight of every ordered pair (``pair_a``, ``pair_b``)."""
        if question_weights is None:
            question_weights = np.ones(self._won.shape[1])
        return self._won @ question_weights, self._lost @ question_weights

    def problem(self, question_weights: np.ndarray | None = None) -> str | None:
        """Why these weights have no finite maximum (see :func:`finite_scores_problem`), or None."""
        won, lost = self.pair_weights(question_weights)
        graph = won_against(self.comparisons.n_models, self.pair_a, self.pair_b, won, lost)
        return finite_scores_problem(graph, self.comparisons.models, self.present)

    def _design(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        design = np.zeros((len(a), len(self.columns)))
        rows = np.arange(len(a))
        for side, sign in ((a, 1.0), (b, -1.0)):
            column = self._column_of[side]
            keep = column >= 0
            design[rows[keep], column[keep]] = sign
        return design

    def fit(self, question_weights: np.ndarray | None = None) -> Strengths:
        """Maximum-likelihood strengths under these weights (the caller has checked :meth:`problem`
        where ``c`` is infinite). Models absent from the comparisons get NaN."""
        comparisons = self.comparisons
        if self._aggregate:
            won, lost = self.pair_weights(question_weights)
            design = self._design(self.pair_a, self.pair_b)
        else:
            weights = (
                np.ones(len(comparisons))
                if question_weights is None
                else question_weights[comparisons.question]
            )
            won = weights * comparisons.outcome
            lost = weights * (1.0 - comparisons.outcome)
            design = np.hstack([self._design(comparisons.a, comparisons.b), comparisons.covariates])
        rows = np.vstack([design, design])
        labels = np.concatenate([np.ones(len(design)), np.zeros(len(design))])
        model = self._estimator()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # sklearn: "Setting penalty=None ..."
            model.fit(rows, labels, sample_weight=np.concatenate([won, lost]))
        coef = model.coef_[0]
        values = np.full(comparisons.n_models, np.nan)
        values[self.present] = 0.0
        values[self.columns] = coef[: len(self.columns)]
        if self.anchor is None:
            values = values - np.nanmean(values)
        return Strengths(values=values, coefficients=coef[len(self.columns) :].copy())

    def _estimator(self):
        """One estimator per fit object, warm-started: bootstrap fits start from the last solution."""
        if self._model is None:
            from sklearn.linear_model import LogisticRegression

            self._model = LogisticRegression(
                C=self.c, fit_intercept=False, solver="lbfgs", tol=1e-10, max_iter=2000, warm_start=True
            )
        return self._model


def fit_bradley_terry(comparisons: Comparisons, anchor: int | None = None) -> Strengths:
    """Unregularised maximum-likelihood strengths; ValueError (saying why) when none are finite."""
    fit = BradleyTerryFit(comparisons, anchor)
    problem = fit.problem()
    if problem is not None:
        raise NoFiniteScores(problem)
    with single_threaded():
        return fit.fit()


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """BLAS on one thread while fitting: the problems are tiny, and on a busy machine OpenBLAS's
    threads made one fit 20x slower (110 ms instead of 6 ms, measured); wrap loops, not single fits
    (entering costs ~2 ms)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


class NoFiniteScores(ValueError):
    """The maximum-likelihood scores are infinite: a group of models never lost (or never met others)."""
