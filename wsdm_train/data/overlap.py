"""Rows that are the same pair: extra rows repeating a competition pair, and the keys folds group by.

A pair is the prompt and the two responses, in either order, compared after a light normalisation
(:func:`pair_key`). The LMSYS and ut tables are added to every fold's training set. A row of theirs
that is the same pair as a competition row therefore puts that row's answer into the training data
of the fold whose dev set holds it: dev accuracy and the best checkpoint are then measured on
training data. The reference kept such rows; prepare drops them by default and counts them
(``prepare.drop_extra_overlap: false`` keeps them). Competition rows that repeat a pair among
themselves are kept in one fold instead (:func:`fold_keys`, :mod:`wsdm_train.data.folds`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

from .sources import CompetitionRows, Skip, SourceRows

OVERLAP_REASON = "same pair as a competition row"


def _canonical(text: str) -> str:
    """Text compared without square brackets and with whitespace collapsed: the competition table's
    normalisation drops every bracket, the LMSYS list parsing keeps those inside a turn, and the two
    copies of one pair must still compare equal."""
    return " ".join(text.replace("[", "").replace("]", "").split())


def pair_key(prompt: str, response_a: str, response_b: str) -> tuple[str, str, str]:
    """The pair as an order-free key: a swapped copy is the same pair."""
    first, second = sorted((_canonical(response_a), _canonical(response_b)))
    return _canonical(prompt), first, second


def prompt_key(prompt: str) -> str:
    """The prompt alone, normalised as in :func:`pair_key`: the strictest grouping of folds."""
    return _canonical(prompt)


def fold_keys(train: CompetitionRows, group_by: str) -> list[Hashable | None] | None:
    """The key each competition row is grouped by in the folds (``prepare.group_folds_by``).

    One key per row of the file, in file order: a skipped row has no text and gets ``None`` (a group
    of its own); ``none`` gives no keys (rows are split one by one, as the reference did).
    """
    if group_by == "none":
        return None
    keys: list[Hashable | None] = [None] * len(train.all_ids)
    for position, prompt, a, b in zip(
        train.positions, train.prompts, train.responses_a, train.responses_b, strict=True
    ):
        keys[position] = pair_key(prompt, a, b) if group_by == "pair" else prompt_key(prompt)
    return keys


def competition_pairs(train: CompetitionRows) -> set[tuple[str, str, str]]:
    """The pair keys of the competition rows, computed once for every extra table."""
    return {
        pair_key(p, a, b) for p, a, b in zip(train.prompts, train.responses_a, train.responses_b, strict=True)
    }


def drop_overlap(
    extra: SourceRows, train: CompetitionRows, seen: set[tuple[str, str, str]] | None = None
) -> SourceRows:
    """``extra`` without the rows whose pair is a competition row's; each dropped row is a Skip.

    ``seen``: :func:`competition_pairs` of ``train``, when the caller checks several tables.
    """
    seen = competition_pairs(train) if seen is None else seen
    keep = [
        i
        for i, (p, a, b) in enumerate(zip(extra.prompts, extra.responses_a, extra.responses_b, strict=True))
        if pair_key(p, a, b) not in seen
    ]
    if len(keep) == len(extra):
        return extra
    kept = set(keep)
    dropped = [
        Skip(extra.source, extra.rows[i], extra.ids[i], OVERLAP_REASON)
        for i in range(len(extra))
        if i not in kept
    ]
    columns = ("keys", "ids", "rows", "labels", "prompts", "responses_a", "responses_b")
    values = {name: [getattr(extra, name)[i] for i in keep] for name in columns}
    return dataclasses.replace(extra, **values, skipped=[*extra.skipped, *dropped])


def count_dropped(skipped: list[dict]) -> int:
    return sum(1 for s in skipped if s["reason"] == OVERLAP_REASON)
