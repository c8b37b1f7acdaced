"""Pairing and Bradley-Terry: one place, used by ``wsdm-serve rank`` and by group rewards.

Pure numpy, scipy and scikit-learn; nothing here knows of engines, prompts or files.

- ``schedule``       which pairs to judge: baseline, all pairs, within a group (vs-reference,
                     round-robin, circular), spread over questions
- ``budget``         the adaptive schedule of ``--pairs budget``
- ``outcomes``       soft and hard outcomes, arena votes, the length covariate of style control
- ``bradley_terry``  the maximum-likelihood fit (scikit-learn), the Elo scale, when scores are finite
- ``board``          a leaderboard: scores, bootstrap intervals over questions, win rates
- ``groups``         rewards of one group of responses from its pairwise probabilities
"""

from .board import CI_LEVEL, Board, leaderboard
from .bradley_terry import (
    BradleyTerryFit,
    Comparisons,
    NoFiniteScores,
    Strengths,
    elo_scores,
    fit_bradley_terry,
    single_threaded,
)
from .budget import BudgetPlanner
from .groups import GroupRewards, group_rewards, pairwise_matrix
from .outcomes import VOTE_OUTCOMES, hard_outcomes, length_covariate, vote_outcomes
from .schedule import (
    GROUP_METHODS,
    GroupMethod,
    all_pairs,
    baseline_pairs,
    circular_pairs,
    group_pairs,
    on_every_question,
    reference_pairs,
)

__all__ = [
    "CI_LEVEL",
    "GROUP_METHODS",
    "VOTE_OUTCOMES",
    "Board",
    "BradleyTerryFit",
    "BudgetPlanner",
    "Comparisons",
    "GroupMethod",
    "GroupRewards",
    "NoFiniteScores",
    "Strengths",
    "all_pairs",
    "baseline_pairs",
    "circular_pairs",
    "elo_scores",
    "fit_bradley_terry",
    "group_pairs",
    "group_rewards",
    "hard_outcomes",
    "leaderboard",
    "length_covariate",
    "on_every_question",
    "pairwise_matrix",
    "reference_pairs",
    "single_threaded",
    "vote_outcomes",
]
