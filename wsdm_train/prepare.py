"""`wsdm-train prepare`: folds, per-fold training/dev sets and post-pretraining sets, as Parquet.

For the student and for each teacher, with that model's tokenizer and prompt:

- ``fold{k}/train.parquet``: competition rows of the other folds, then every LMSYS row;
- ``fold{k}/dev.parquet``: competition rows of fold k (budget of the dev set);
- ``pretrain.parquet``: ut rows, each in both A/B orders (the swapped order reuses the same
  truncation and flips the label).

The text of a row does not depend on the fold, so each (model, budget) is encoded once and the
fold files are selections of it.

Everything is written into a staging folder next to the output folder, one unit (folds, student,
each teacher) at a time with a completion marker per unit, so an interrupted run resumes where it
stopped; the finished folder replaces the old one only at the end, and ``manifest.json`` is
written last, so a folder with a manifest is always complete. A re-run whose fingerprint matches
the manifest does nothing.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsdm_serve.errors import WsdmError
from wsdm_serve.outputs import atomic_write
from wsdm_serve.prompt import STUDENT_SYSTEM_PROMPT, TEACHER_SYSTEM_PROMPT

from .config import Budget, Config
from .inputs import data_path
from .manifest import (
    MANIFEST_NAME,
    build_manifest,
    fingerprint,
    outputs_intact,
    read_manifest,
    sha256_file,
    summary_line,
    tokenizer_files,
)
from .overlap import competition_pairs, drop_overlap, fold_keys
from .sources import CompetitionRows, Skip, SourceRows, read_competition, read_lmsys, read_ut
from .staging import Staging

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


@dataclass
class PrepareResult:
    up_to_date: bool
    out_dir: Path
    manifest: dict[str, Any]
    summary: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Inputs:
    train: Path
    lmsys: Path | None
    ut: Path | None
    missing: dict[str, Path]


def _echo(message: str) -> None:
    print(message, file=sys.stderr)


# --------------------------------------------------------------------------- planning


def resolve_inputs(config: Config) -> Inputs:
    def resolve(name: str) -> Path:
        return data_path(config, name)

    prep = config.prepare
    train = resolve(prep.train_file)
    if not train.is_file():
        what = "is a folder" if train.is_dir() else "file not found"
        raise WsdmError(f"{train}: {what} (the competition train table, prepare.train_file)")
    missing: dict[str, Path] = {}
    extras: dict[str, Path | None] = {}
    for role, name in (("lmsys", prep.lmsys_file), ("ut", prep.ut_file)):
        if not name:
            extras[role] = None
            continue
        path = resolve(name)
        if path.is_dir():
            raise WsdmError(f"{path}: is a folder, expected a table (prepare.{role}_file)")
        if path.exists():
            extras[role] = path
        else:
            extras[role] = None
            missing[role] = path
    return Inputs(train=train, lmsys=extras["lmsys"], ut=extras["ut"], missing=missing)


def model_specs(config: Config) -> list[ModelSpec]:
    prep = config.prepare
    specs = [
        ModelSpec(
            "student",
            Path(config.student.tokenizer_dir),
            STUDENT_SYSTEM_PROMPT,
            prep.student_train,
            prep.student_dev,
            prep.student_pretrain,
            None,
        )
    ]
    for teacher in config.teachers:
        specs.append(
            ModelSpec(
                f"teachers/{teacher.name}",
                Path(teacher.tokenizer_dir),
                TEACHER_SYSTEM_PROMPT,
                prep.teacher_train,
                prep.teacher_dev,
                prep.teacher_pretrain,
                prep.teacher_pretrain_max_words,
            )
        )
    for spec in specs:
        if not spec.tokenizer_dir.is_dir():
            where = "student" if spec.key == "student" else spec.key.replace("teachers/", "teachers.")
            raise WsdmError(
                f"{spec.tokenizer_dir}: tokenizer folder not found ({where}.tokenizer, or {where}.model "
                "when no tokenizer is set)"
            )
    return specs


# --------------------------------------------------------------------------- entry point


def run_prepare(
    config: Config,
    *,
    config_source: str = "",
    force: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = _echo,
) -> PrepareResult:
    """Make (or confirm up to date) the processed folder described by ``config``."""
    started = time.time()
    inputs = resolve_inputs(config)
    specs = model_specs(config)
    out_dir = Path(config.paths.processed_dir)

    input_hashes = {
        "train": sha256_file(inputs.train),
        "lmsys": sha256_file(inputs.lmsys) if inputs.lmsys else None,
        "ut": sha256_file(inputs.ut) if inputs.ut else None,
    }
    tokenizer_hashes = {spec.key: tokenizer_files(spec.tokenizer_dir) for spec in specs}
    digest = fingerprint(config, input_hashes, tokenizer_hashes)
    notes = [
        f"{path} not found; {'no LMSYS rows in the training sets' if role == 'lmsys' else 'no post-pretraining data'}"
        for role, path in inputs.missing.items()
    ]

    old = read_manifest(out_dir) if out_dir.is_dir() else None
    if old is not None and not force and old.get("fingerprint") == digest and outputs_intact(out_dir, old):
        return PrepareResult(True, out_dir, old, f"prepare: up to date ({out_dir})", notes)
    _check_replaceable(out_dir, old)
    for note in notes:
        echo(f"prepare: note: {note}")

    train = read_competition(inputs.train)
    lmsys = read_lmsys(inputs.lmsys) if inputs.lmsys else None
    ut = read_ut(inputs.ut) if inputs.ut else None
    if config.prepare.drop_extra_overlap and (lmsys is not None or ut is not None):
        seen = competition_pairs(train)
        lmsys = drop_overlap(lmsys, train, seen) if lmsys is not None else None
        ut = drop_overlap(ut, train, seen) if ut is not None else None
    if len(train) == 0:
        raise WsdmError(f"{inputs.train}: no usable rows (first reason: {train.skipped[0].reason})")

    staging = Staging(out_dir, digest, fresh=force)
    stage = staging.path
    units: dict[str, dict] = {}
    units["folds"], _ = staging.run_unit("folds", lambda: _write_folds(stage, train, config))
    folds = np.asarray(units["folds"]["folds"], dtype=np.int8)
    tokenizers: dict[Path, Any] = {}
    for spec in specs:

        def work(spec: ModelSpec = spec) -> dict:
            tokenizer = _tokenizer(tokenizers, spec.tokenizer_dir)
            return _write_model(stage, spec, tokenizer, train, folds, lmsys, ut, config, progress)

        units[spec.key], ran = staging.run_unit(spec.key, work)
        if ran and progress:
            record = units[spec.key]
            rows = sum(item["rows"] for item in record["outputs"])
            echo(
                f"prepare: {spec.key}: {len(record['outputs'])} files, {rows:,} rows ({record['seconds']:.1f} s)"
            )

    manifest = build_manifest(
        config,
        config_source,
        digest,
        inputs=_describe_inputs(inputs, input_hashes, {"train": train, "lmsys": lmsys, "ut": ut}),
        tokenizers={
            spec.key: {"path": str(spec.tokenizer_dir), "files": tokenizer_hashes[spec.key]} for spec in specs
        },
        skipped=[dataclasses.asdict(s) for rows in (train, lmsys, ut) if rows for s in rows.skipped],
        units=units,
    )
    atomic_write(stage / MANIFEST_NAME, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1), "utf-8"))
    staging.publish()
    summary = summary_line(manifest, out_dir, time.time() - started)
    return PrepareResult(False, out_dir, manifest, summary, notes)


def _tokenizer(cache: dict[Path, Any], folder: Path):
    from wsdm_serve.tokenizer import load_tokenizer

    key = folder.resolve()
    if key not in cache:
        cache[key] = load_tokenizer(folder)
    return cache[key]


# --------------------------------------------------------------------------- safety


def _check_replaceable(out_dir: Path, manifest: dict[str, Any] | None) -> None:
    """Only a folder that prepare wrote (it has a manifest, even an unfinished one) is ever replaced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise WsdmError(f"{out_dir}: exists and is not a folder (paths.processed_dir)")
    if (
        manifest is None
        and out_dir.is_dir()
        and not (out_dir / MANIFEST_NAME).exists()
        and any(out_dir.iterdir())
    ):
        raise WsdmError(
            f"{out_dir}: folder exists but was not written by `wsdm-train prepare` (no {MANIFEST_NAME}); "
            "move it away or set paths.processed_dir"
        )


# --------------------------------------------------------------------------- writing


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


def _write_folds(stage: Path, train: CompetitionRows, config: Config) -> dict:
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


def _write_model(
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


def _describe_inputs(
    inputs: Inputs, hashes: dict[str, str | None], rows: dict[str, SourceRows | None]
) -> dict:
    described = {}
    for role in ("train", "lmsys", "ut"):
        path = getattr(inputs, role)
        if path is None:
            missing = inputs.missing.get(role)
            described[role] = {"present": False, "path": str(missing) if missing else None}
            continue
        described[role] = {
            "present": True,
            "path": str(path),
            "sha256": hashes[role],
            "bytes": path.stat().st_size,
            "rows_read": rows[role].n_read,
            "rows_used": len(rows[role]),
        }
    return described
