"""`wsdm-train prepare`: folds, per-fold training/dev sets and post-pretraining sets, as Parquet.

The inputs are read into labelled rows (:mod:`.sources`), extra rows that repeat a competition
pair are dropped (:mod:`.overlap`), and the folds and every model's sets are written
(:mod:`.sets`). Everything is written into a staging folder next to the output folder, one unit
(folds, student, each teacher) at a time with a completion marker per unit, so an interrupted run
resumes where it stopped; the finished folder replaces the old one only at the end, and
``manifest.json`` is written last, so a folder with a manifest is always complete. A re-run whose
fingerprint matches the manifest does nothing.
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

from ..config import Config
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
from .overlap import competition_pairs, drop_overlap
from .sets import ModelSpec, write_folds, write_model_sets
from .sources import CompetitionRows, SourceRows, read_competition, read_lmsys, read_ut
from .staging import Staging


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

    train, lmsys, ut = _read_rows(config, inputs)
    staging = Staging(out_dir, digest, fresh=force)
    units = _write_units(staging, config, specs, (train, lmsys, ut), progress, echo)
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
    atomic_write(
        staging.path / MANIFEST_NAME, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1), "utf-8")
    )
    staging.publish()
    summary = summary_line(manifest, out_dir, time.time() - started)
    return PrepareResult(False, out_dir, manifest, summary, notes)


def _read_rows(
    config: Config, inputs: Inputs
) -> tuple[CompetitionRows, SourceRows | None, SourceRows | None]:
    """The three tables as labelled rows; extra rows repeating a competition pair dropped (the setting)."""
    train = read_competition(inputs.train)
    lmsys = read_lmsys(inputs.lmsys) if inputs.lmsys else None
    ut = read_ut(inputs.ut) if inputs.ut else None
    if config.prepare.drop_extra_overlap and (lmsys is not None or ut is not None):
        seen = competition_pairs(train)
        lmsys = drop_overlap(lmsys, train, seen) if lmsys is not None else None
        ut = drop_overlap(ut, train, seen) if ut is not None else None
    if len(train) == 0:
        raise WsdmError(f"{inputs.train}: no usable rows (first reason: {train.skipped[0].reason})")
    return train, lmsys, ut


def _write_units(
    staging: Staging,
    config: Config,
    specs: list[ModelSpec],
    rows: tuple[CompetitionRows, SourceRows | None, SourceRows | None],
    progress: bool,
    echo: Callable[[str], None],
) -> dict[str, dict]:
    """The folds, then each model's sets, as resumable units of the staging folder; their records."""
    train, lmsys, ut = rows
    stage = staging.path
    units: dict[str, dict] = {}
    units["folds"], _ = staging.run_unit("folds", lambda: write_folds(stage, train, config))
    folds = np.asarray(units["folds"]["folds"], dtype=np.int8)
    tokenizers: dict[Path, Any] = {}
    for spec in specs:

        def work(spec: ModelSpec = spec) -> dict:
            tokenizer = _tokenizer(tokenizers, spec.tokenizer_dir)
            return write_model_sets(stage, spec, tokenizer, train, folds, lmsys, ut, config, progress)

        units[spec.key], ran = staging.run_unit(spec.key, work)
        if ran and progress:
            record = units[spec.key]
            count = sum(item["rows"] for item in record["outputs"])
            echo(
                f"prepare: {spec.key}: {len(record['outputs'])} files, {count:,} rows ({record['seconds']:.1f} s)"
            )
    return units


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
