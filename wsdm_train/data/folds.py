"""Cross-validation folds: the reference's split, with the rows of one pair kept in one fold.

The reference assigned fold k to the test indices of the k-th split of scikit-learn's
``StratifiedKFold(n_splits=5, shuffle=True, random_state=2025)`` over the competition train after
``reset_index``, stratified on the A/B label. All four of its pipelines (three teachers and the
student) used the same code, which is what makes teacher fold k's out-of-fold logits line up with
student fold k. We call scikit-learn itself rather than re-deriving its shuffling: the split
algorithm has been stable since scikit-learn 0.22 (1.4.2, the reference's pin, and 1.9 give the
same folds).

Real preference tables repeat a pair (the same prompt and both responses, sometimes with the
opposite label from another annotator). Split by rows, such a pair lands in one fold's dev rows and
in the same fold's training rows, so dev accuracy is measured partly on training rows. With
grouping (``prepare.group_folds_by``, default ``pair``), every row of a group takes the fold the
reference's split gave the group's first row. Rows whose group is theirs alone keep the reference's
fold, so the split moves only the repeated rows and stays stratified up to them (a
``StratifiedGroupKFold`` would reshuffle every row, and the reference's teacher logits would no
longer be out of fold).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from wsdm_serve.errors import WsdmError

GROUPINGS: tuple[str, ...] = ("pair", "prompt", "none")


@dataclass(frozen=True)
class FoldSplit:
    """The fold of every row, and what grouping did to the reference's split."""

    folds: np.ndarray  # int8, one per row
    groups: int  # distinct groups (rows when not grouped)
    rows_in_shared_groups: int  # rows whose group holds another row too
    moved_rows: int  # rows whose fold differs from the reference's


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """The reference's fold of every row; the split only looks at the labels and the row count."""
    try:
        from sklearn.model_selection import StratifiedKFold
    except ImportError as exc:
        raise WsdmError("scikit-learn is needed for the folds: pip install 'wsdm[train]'") from exc
    labels = np.asarray(labels)
    folds = np.full(len(labels), -1, dtype=np.int8)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    try:
        for fold, (_, test_index) in enumerate(splitter.split(np.zeros((len(labels), 1)), labels)):
            folds[test_index] = fold
    except ValueError as exc:
        raise WsdmError(f"cannot make {n_folds} stratified folds of {len(labels)} rows: {exc}") from exc
    return folds


def group_ids(keys: Sequence[Hashable | None]) -> np.ndarray:
    """A group number per row: equal keys share one; a ``None`` key (an unusable row) is its own group."""
    numbers: dict[Hashable, int] = {}
    ids = np.empty(len(keys), dtype=np.int64)
    for row, key in enumerate(keys):
        ids[row] = numbers.setdefault(object() if key is None else key, len(numbers))
    return ids


def assign_folds(
    labels: np.ndarray, n_folds: int, seed: int, keys: Sequence[Hashable | None] | None = None
) -> FoldSplit:
    """The reference's split; with ``keys``, rows of one key follow the fold of its first row."""
    reference = stratified_folds(labels, n_folds, seed)
    if keys is None:
        return FoldSplit(reference, len(reference), 0, 0)
    if len(keys) != len(reference):
        raise ValueError("one group key per row")
    ids = group_ids(keys)
    _, first_row, sizes = np.unique(ids, return_index=True, return_counts=True)
    folds = reference[first_row][ids]  # np.unique sorts the ids, which are 0..groups-1
    return FoldSplit(
        folds=folds.astype(np.int8),
        groups=len(first_row),
        rows_in_shared_groups=int(sizes[sizes > 1].sum()),
        moved_rows=int((folds != reference).sum()),
    )
