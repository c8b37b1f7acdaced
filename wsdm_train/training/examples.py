"""The stages' inputs: the processed Parquet tables checked and turned into training examples.

The tables follow the contract ``wsdm-train prepare`` (fold and post-pretraining rows) and
``wsdm-train teacher-predict`` (teacher logits) write; a file that breaks it is one line naming
the file and row, before any model is loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from wsdm_serve.errors import WsdmError

from ..config import PretrainSettings
from .trainer import Examples

FOLD_COLUMNS = ("row_key", "label", "input_ids")
PRETRAIN_COLUMNS = ("row_key", "label", "input_ids", "input_ids_swapped", "label_swapped")
PREDICTION_COLUMNS = ("row_key", "logit_a", "logit_b", "out_of_fold")


def read_parquet(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise WsdmError(f"{path}: file not found (run the earlier stage first)")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WsdmError(f"{path}: unreadable parquet file ({reason})") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise WsdmError(f"{path}: missing column {', '.join(missing)}")
    if len(frame) == 0:
        raise WsdmError(f"{path}: no rows")
    labels = frame["label"]
    bad = (~labels.isin([0, 1])).to_numpy().nonzero()[0]
    if len(bad):
        raise WsdmError(f"{path}: row {bad[0] + 1}: label {labels.iloc[bad[0]]!r} is not 0 or 1")
    duplicated = frame["row_key"].duplicated().to_numpy().nonzero()[0]
    if len(duplicated):
        raise WsdmError(
            f"{path}: row {duplicated[0] + 1}: duplicate row_key {frame['row_key'].iloc[duplicated[0]]!r}"
        )
    return frame.reset_index(drop=True)


def _ids(column) -> list[np.ndarray]:
    return [np.asarray(ids, dtype=np.int64) for ids in column]


def fold_examples(path: Path) -> Examples:
    frame = read_parquet(path, FOLD_COLUMNS)
    return Examples(
        _ids(frame["input_ids"]), frame["label"].to_numpy(np.int64), frame["row_key"].astype(str).tolist()
    )


def pair_groups(frame: pd.DataFrame) -> np.ndarray:
    """A group number per row; rows that are the same pair, in either order, share one.

    Rendered prompts are compared: the same normalised prompt and responses give the same token ids,
    and a pair given the other way round has its forward ids equal to this row's swapped ids.
    """
    numbers: dict[bytes, int] = {}
    groups = np.empty(len(frame), np.int64)
    for row, (forward, swapped) in enumerate(
        zip(frame["input_ids"], frame["input_ids_swapped"], strict=True)
    ):
        key = min(np.asarray(forward, np.int64).tobytes(), np.asarray(swapped, np.int64).tobytes())
        groups[row] = numbers.setdefault(key, len(numbers))
    return groups


def split_whole_pairs(groups: np.ndarray, order: np.ndarray, n_dev: int) -> tuple[np.ndarray, np.ndarray]:
    """Dev and training row numbers: rows taken in ``order``, each with its whole group, until at
    least ``n_dev`` are held out, so no pair is on both sides. Where every group is one row this is
    the first ``n_dev`` rows of ``order``."""
    sizes = np.bincount(groups)
    held: set[int] = set()
    count = 0
    for row in order:
        if count >= n_dev:
            break
        group = int(groups[row])
        if group not in held:
            held.add(group)
            count += int(sizes[group])
    dev = np.isin(groups, list(held))
    return np.flatnonzero(dev), np.flatnonzero(~dev)


def pretrain_examples(path: Path, settings: PretrainSettings, seed: int) -> tuple[Examples, Examples]:
    """Train and dev splits of the post-pretraining rows; dev rows are held out of training, and a
    pair that repeats (the same texts, in either order) is wholly on one side.

    Both splits carry both orders when ``both_orders`` (a row and its swap are adjacent and stay
    in one micro-batch); the dev score always uses both orders, as the reference's did.
    """
    frame = read_parquet(path, PRETRAIN_COLUMNS)
    n_dev = min(settings.dev_rows, len(frame) - 1)
    if n_dev < 1:
        raise WsdmError(f"{path}: {len(frame)} row(s) are too few to hold out a dev set")
    order = np.random.default_rng(seed).permutation(len(frame))
    dev_rows, train_rows = split_whole_pairs(pair_groups(frame), order, n_dev)
    if not len(train_rows):
        raise WsdmError(f"{path}: every row is the same pair; nothing is left to train on beside the dev set")

    def build(rows: np.ndarray, both: bool) -> Examples:
        part = frame.iloc[rows]
        keys = part["row_key"].astype(str).tolist()
        forward = _ids(part["input_ids"])
        labels = part["label"].to_numpy(np.int64)
        if not both:
            return Examples(forward, labels, keys)
        swapped = _ids(part["input_ids_swapped"])
        swapped_labels = part["label_swapped"].to_numpy(np.int64)
        if ((labels + swapped_labels) != 1).any():
            raise WsdmError(f"{path}: label_swapped must be 1 - label on every row")
        ids = [seq for pair in zip(forward, swapped, strict=True) for seq in pair]
        pair_labels = np.stack([labels, swapped_labels], axis=1).reshape(-1)
        pair_keys = [k for key in keys for k in (key, key + ":swapped")]
        return Examples(ids, pair_labels, pair_keys, group=2)

    return build(train_rows, settings.both_orders), build(dev_rows, True)


def read_predictions(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise WsdmError(f"{path}: teacher predictions not found (run `wsdm-train teacher-predict` first)")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001
        raise WsdmError(f"{path}: unreadable parquet file ({exc})") from exc
    missing = [c for c in PREDICTION_COLUMNS[:3] if c not in frame.columns]
    if missing:
        raise WsdmError(f"{path}: missing column {', '.join(missing)}")
    values = frame[["logit_a", "logit_b"]].to_numpy(np.float64)
    bad = (~np.isfinite(values)).any(axis=1).nonzero()[0]
    if len(bad):
        raise WsdmError(f"{path}: row {bad[0] + 1}: logit is not a finite number")
    if frame["row_key"].duplicated().any():
        raise WsdmError(
            f"{path}: duplicate row_key {frame['row_key'][frame['row_key'].duplicated()].iloc[0]!r}"
        )
    return frame


def attach_teacher_logits(
    examples: Examples, predictions: list[tuple[str, Path]], missing: str
) -> tuple[Examples, int]:
    """Join each teacher's A/B logits onto the student rows by ``row_key`` ([n, J, 2])."""
    keys = pd.Index(examples.keys)
    stacked = []
    keep = np.ones(len(keys), dtype=bool)
    for name, path in predictions:
        frame = read_predictions(path).set_index("row_key")
        aligned = frame.reindex(keys)[["logit_a", "logit_b"]].to_numpy(np.float32)
        absent = np.isnan(aligned).any(axis=1)
        if absent.any() and missing == "error":
            first = keys[absent.nonzero()[0][0]]
            raise WsdmError(
                f"{path}: teacher {name} has no logits for {int(absent.sum())} of {len(keys)} training row(s) "
                f"(first: {first}); re-run teacher-predict, or set distill.missing_teacher_logits=drop"
            )
        keep &= ~absent
        stacked.append(aligned)
    teacher = np.stack(stacked, axis=1)
    dropped = int((~keep).sum())
    if dropped == len(keys):
        raise WsdmError("no training row has logits from every teacher")
    rows = keep.nonzero()[0]
    joined = Examples(
        [examples.ids[i] for i in rows],
        examples.labels[rows],
        [examples.keys[i] for i in rows],
        teacher=teacher[rows],
    )
    return joined, dropped
