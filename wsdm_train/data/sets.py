"""The Parquet files `wsdm-train prepare` writes: the folds, and each model's fold and pretrain sets.

For the student and for each teacher, with that model's tokenizer and prompt:

- ``fold{k}/train.parquet``: competition rows of the other folds, then every LMSYS row;
- ``fold{k}/dev.parquet``: competition rows of fold k (budget of the dev set);
- ``pretrain.parquet``: ut rows, each in both A/B orders (the swapped order reuses the same
  truncation and flips the label).

The text of a row does not depend on the fold, so each (model, budget) is encoded once and the
fold files are selections of it. Each function returns the record of what it wrote (paths, rows,
bytes, tokens, skipped rows) for the manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsdm_serve.outputs import atomic_write

from ..config import Budget, Config
from .overlap import fold_keys
from .sources import CompetitionRows, Skip, SourceRows

ROW_GROUP_ROWS = 2048


@dataclass(frozen=True)
class ModelSpec:
    """One model whose data is prepared: its folder under the output, tokenizer and prompt."""

    key: str  # "student" or "teachers/<name>"
    tokenizer_dir: Path
    system_prompt: str
    train: Budget
    dev: Budget
    pretrain: Budget
    pretrain_max_words: int | None


def _write_table(stage: Path, rel: str, table) -> dict[str, Any]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = stage / rel
    atomic_write(
        path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    )
    n_tokens = table.column("n_tokens")
    return {
        "path": rel,
        "rows": table.num_rows,
        "bytes": path.stat().st_size,
        "tokens": int(pc.sum(n_tokens).as_py() or 0),
        "max_tokens": int(pc.max(n_tokens).as_py() or 0),
    }


def write_folds(stage: Path, train: CompetitionRows, config: Config) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .folds import assign_folds

    prep = config.prepare
    split = assign_folds(
        train.all_labels, prep.n_folds, prep.fold_seed, fold_keys(train, prep.group_folds_by)
    )
    folds = split.folds
    table = pa.table(
        {
            "id": pa.array(train.all_ids, pa.string()),
            "fold": pa.array(folds, pa.int8()),
            "label": pa.array(train.all_labels, pa.int8()),
        }
    )
    path = stage / "folds.parquet"
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    n = config.prepare.n_folds
    return {
        "outputs": [{"path": "folds.parquet", "rows": table.num_rows, "bytes": path.stat().st_size}],
        "folds": folds.tolist(),
        "rows_per_fold": np.bincount(folds, minlength=n).tolist(),
        "label_b_per_fold": np.bincount(folds, weights=train.all_labels, minlength=n).astype(int).tolist(),
        "groups": split.groups,
        "rows_in_shared_groups": split.rows_in_shared_groups,
        "moved_rows": split.moved_rows,
        "skipped": [],
    }


def _meta(sources: list[SourceRows], folds_of: list[np.ndarray]):
    """row_key, id, source, fold, label of the concatenated rows (a pyarrow table)."""
    import pyarrow as pa

    return pa.table(
        {
            "row_key": pa.array([k for s in sources for k in s.keys], pa.string()),
            "id": pa.array([i for s in sources for i in s.ids], pa.string()),
            "source": pa.array([s.source for s in sources for _ in range(len(s))], pa.string()),
            "fold": pa.array(np.concatenate(folds_of) if folds_of else [], pa.int8()),
            "label": pa.array(np.concatenate([s.label_array() for s in sources]), pa.int8()),
        }
    )


def _encode_set(
    spec: ModelSpec, tokenizer, sources: list[SourceRows], folds_of, budget, config, progress, name
):
    """Encode the concatenated rows of ``sources``; returns (table, skips)."""
    from wsdm_serve.prompt import JudgePrompt

    from .encode import encode_rows

    meta = _meta(sources, folds_of)
    encoded = encode_rows(
        tokenizer,
        JudgePrompt(tokenizer, spec.system_prompt),
        [p for s in sources for p in s.prompts],
        [a for s in sources for a in s.responses_a],
        [b for s in sources for b in s.responses_b],
        config.prepare.truncation(budget),
        desc=f"{spec.key} {name} {budget.token_budget}",
        progress=progress,
    )
    table = meta.take(encoded.kept)
    for column in ("text", "input_ids", "n_tokens"):
        table = table.append_column(column, encoded.columns[column])
    return table, _failures(encoded.failures, sources, f"{spec.key}:{name}")


def _failures(failures, sources: list[SourceRows], scope: str) -> list[Skip]:
    """Map positions in the concatenated rows back to (source, row, id)."""
    if not failures:
        return []
    owners = [(s, i) for s in sources for i in range(len(s))]
    skips = []
    for position, reason in failures:
        source, i = owners[position]
        skips.append(Skip(source.source, source.rows[i], source.ids[i], reason, scope))
    return skips


def write_model_sets(
    stage: Path,
    spec: ModelSpec,
    tokenizer,
    train: CompetitionRows,
    folds: np.ndarray,
    lmsys: SourceRows | None,
    ut: SourceRows | None,
    config: Config,
    progress: bool,
) -> dict:
    import pyarrow.compute as pc

    train_folds = folds[np.asarray(train.positions, dtype=np.int64)]
    sources: list[SourceRows] = [train]
    folds_of = [train_folds]
    if lmsys is not None:
        sources.append(lmsys)
        folds_of.append(np.full(len(lmsys), -1, dtype=np.int8))

    outputs: list[dict] = []
    skipped: list[Skip] = []
    train_table, skips = _encode_set(
        spec, tokenizer, sources, folds_of, spec.train, config, progress, "train"
    )
    skipped += skips
    if spec.dev == spec.train:
        dev_table = train_table  # same budget: dev rows are the competition rows of the same encoding
    else:
        dev_table, skips = _encode_set(
            spec, tokenizer, [train], [train_folds], spec.dev, config, progress, "dev"
        )
        skipped += skips
    for k in range(config.prepare.n_folds):
        fold = train_table.column("fold")
        outputs.append(
            _write_table(
                stage, f"{spec.key}/fold{k}/train.parquet", train_table.filter(pc.not_equal(fold, k))
            )
        )
        dev_fold = dev_table.column("fold")
        outputs.append(
            _write_table(stage, f"{spec.key}/fold{k}/dev.parquet", dev_table.filter(pc.equal(dev_fold, k)))
        )
    del train_table, dev_table

    if ut is not None:
        table, skips = _pretrain_table(spec, tokenizer, ut, config, progress)
        skipped += skips
        outputs.append(_write_table(stage, f"{spec.key}/pretrain.parquet", table))
    return {"outputs": outputs, "skipped": [dataclasses.asdict(s) for s in skipped]}


def _pretrain_table(spec: ModelSpec, tokenizer, ut: SourceRows, config: Config, progress: bool):
    """Both orders of every ut row; the teachers' reference filter on prompt length applies after."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from wsdm_serve.prompt import JudgePrompt

    from .encode import encode_rows

    scope = f"{spec.key}:pretrain"
    encoded = encode_rows(
        tokenizer,
        JudgePrompt(tokenizer, spec.system_prompt),
        ut.prompts,
        ut.responses_a,
        ut.responses_b,
        config.prepare.truncation(spec.pretrain),
        swapped=True,
        desc=f"{spec.key} pretrain {spec.pretrain.token_budget}",
        progress=progress,
    )
    skipped = _failures(encoded.failures, [ut], scope)
    labels = ut.label_array()[encoded.kept]
    cols = encoded.columns
    table = pa.table(
        {
            "row_key": pa.array([ut.keys[i] for i in encoded.kept], pa.string()),
            "label": pa.array(labels, pa.int8()),
            "text": cols["text"],
            "input_ids": cols["input_ids"],
            "n_tokens": cols["n_tokens"],
            "text_swapped": cols["text_swapped"],
            "input_ids_swapped": cols["input_ids_swapped"],
            "label_swapped": pa.array(1 - labels, pa.int8()),
        }
    )
    limit = spec.pretrain_max_words
    if limit is not None and table.num_rows:
        # The reference counted pieces of the finished prompt split on " "; both orders have the same count.
        pieces = pc.add(pc.count_substring(table.column("text"), " "), 1)
        keep = pc.less(pieces, limit)
        dropped = np.flatnonzero(~keep.to_numpy(zero_copy_only=False))
        for j in dropped:
            i = int(encoded.kept[j])
            skipped.append(
                Skip(ut.source, ut.rows[i], ut.ids[i], f"prompt has >= {limit} space-separated pieces", scope)
            )
        table = table.filter(keep)
    return table, skipped
