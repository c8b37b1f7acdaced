"""Cross-validation folds, identical to the reference's.

The reference assigned fold k to the test indices of the k-th split of scikit-learn's
``StratifiedKFold(n_splits=5, shuffle=True, random_state=2025)`` over the competition train after
``reset_index``, stratified on the A/B label. All four of its pipelines (three teachers and the
student) used the same code, which is what makes teacher fold k's out-of-fold logits line up with
student fold k. We call scikit-learn itself rather than re-deriving its shuffling: the split
algorithm has been stable since scikit-learn 0.22 (1.4.2, the reference's pin, and 1.9 give the
same folds).
"""

from __future__ import annotations

import numpy as np

from wsdm_serve.errors import WsdmError


def assign_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold number (0..n_folds-1) of every row; the split only looks at the labels and the row count."""
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
