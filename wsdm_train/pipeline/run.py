"""`wsdm-train all`: prepare -> pretrain -> finetune -> teacher-predict -> distill -> merge -> quantize.

The pipeline keeps a manifest, ``pipeline.json`` in ``paths.model_dir``, with one record per stage:
its status (``running`` or ``finished``), a hash of what the stage's outputs depend on, the
outputs it wrote and how long it took. A stage's hash covers its own configuration and the hash of
the stage before it, so a change anywhere upstream reaches every later stage. On each run:

- a stage whose record is ``finished`` with the same hash, and whose outputs still exist, is
  skipped;
- a stage whose record is ``running`` with the same hash was interrupted: it runs again with its
  own resume support (finished folds are kept, an interrupted fold continues from ``last/``);
- a stage whose hash changed (or ``--force``, or ``--from`` at or before it) starts over: its old
  outputs are removed first, so nothing of the old settings is resumed or kept by mistake.

``prepare`` has its own manifest and fingerprint, so the pipeline asks it instead and chains its
fingerprint. Teachers whose predictions are given as files (the reference's "fast train" path)
are neither prepared nor trained; when every teacher's are given, the teacher stages do not run.

The pipeline runs in one process. Under torchrun each process would run prepare, merge and
quantize as well, so a multi-process launch is refused: launch the training stages one by one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wsdm_serve.errors import WsdmError
from wsdm_serve.outputs import atomic_write

from ..config import Config
from .plan import STAGES, PipelineOptions, Plan, make_plan, preflight
from .stages import Stages

MANIFEST_NAME = "pipeline.json"
FORMAT_VERSION = 1


@dataclass
class StageReport:
    name: str
    status: str  # skipped | done | not needed
    seconds: float = 0.0
    detail: str = ""


@dataclass
class PipelineResult:
    output: Path | None
    reports: list[StageReport] = field(default_factory=list)
    stopped_after: str | None = None


def _echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- manifest


class Manifest:
    """``pipeline.json``: one record per stage, rewritten atomically after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stages: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text("utf-8"))
            except (OSError, ValueError):
                data = None
            if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
                raise WsdmError(
                    f"{path}: not a pipeline manifest this version wrote; move it away to start over"
                )
            self.stages = data.get("stages", {})

    def get(self, name: str) -> dict[str, Any] | None:
        return self.stages.get(name)

    def set(self, name: str, record: dict[str, Any]) -> None:
        self.stages[name] = record
        payload = {"format": FORMAT_VERSION, "stages": self.stages}
        atomic_write(
            self.path,
            lambda tmp: tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", "utf-8"),
        )


def digest(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the pipeline


def run_pipeline(
    config: Config,
    options: PipelineOptions,
    *,
    config_source: str = "",
    echo: Callable[[str], None] = _echo,
) -> PipelineResult:
    """Run (or skip, or resume) every stage up to ``options.until``; returns the final folder."""
    plan = make_plan(config, options)
    preflight(plan, options)
    config = plan.config
    manifest = Manifest(Path(config.paths.model_dir) / MANIFEST_NAME)
    stages = Stages(plan, options)
    result = PipelineResult(output=None)
    redo_from = STAGES.index(options.redo_from) if options.redo_from else None
    upstream = ""
    for index, stage in enumerate(plan.stages):
        redo = options.force or (redo_from is not None and index >= redo_from)
        if stage == "prepare":
            upstream = _prepare(plan, options, redo, config_source, echo, result, manifest)
            continue
        reason = plan.needed(stage)
        if reason is not None:
            echo(f"all: {stage}: not needed ({reason})")
            result.reports.append(StageReport(stage, "not needed", detail=reason))
            upstream = digest({"stage": stage, "not_needed": reason, "upstream": upstream})
            continue
        upstream = _run_stage(stage, stages, manifest, upstream, redo, echo, result)
    last = plan.stages[-1]
    if last == "quantize":
        result.output = config.final_dir()
    elif last == "merge":
        result.output = config.merged_dir()
    if last != STAGES[-1]:
        result.stopped_after = last
    return result


def _run_stage(
    stage: str,
    stages: Stages,
    manifest: Manifest,
    upstream: str,
    redo: bool,
    echo: Callable[[str], None],
    result: PipelineResult,
) -> str:
    """Skip, resume or (re)run one stage by its record; returns its hash, which the next one chains."""
    started = time.time()
    settings = stages.settings(stage)
    stage_hash = digest({"stage": stage, "settings": settings, "upstream": upstream})
    record = manifest.get(stage)
    same = record is not None and record.get("hash") == stage_hash
    finished = same and record.get("status") == "finished"
    if finished and not redo and all(p.exists() for p in stages.finished_outputs(stage)):
        echo(f"all: {stage}: skipped (finished; settings and inputs unchanged)")
        result.reports.append(StageReport(stage, "skipped"))
        return stage_hash
    fresh = redo or (record is not None and not same)
    if fresh:
        echo(f"all: {stage}: {'redo requested' if redo else 'settings or inputs changed'}; starting over")
        stages.clear(stage)
    elif same and record.get("status") == "running":
        echo(f"all: {stage}: resuming an interrupted run")
    else:
        echo(f"all: {stage}: running")
    manifest.set(stage, {"status": "running", "hash": stage_hash, "started": _now(), "settings": settings})
    detail = stages.run(stage, fresh)
    seconds = time.time() - started
    manifest.set(
        stage,
        {
            "status": "finished",
            "hash": stage_hash,
            "finished": _now(),
            "seconds": round(seconds, 1),
            "outputs": [str(p) for p in stages.outputs(stage)],
            "settings": settings,
        },
    )
    echo(f"all: {stage}: done in {seconds:.1f} s ({detail})")
    result.reports.append(StageReport(stage, "done", seconds, detail))
    return stage_hash


def _prepare(
    plan: Plan,
    options: PipelineOptions,
    redo: bool,
    config_source: str,
    echo: Callable[[str], None],
    result: PipelineResult,
    manifest: Manifest,
) -> str:
    """prepare keeps its own fingerprint; the pipeline records it and chains it downstream."""
    from ..data.prepare import run_prepare

    started = time.time()
    # Only teachers that will be trained need prepared data.
    config = dataclasses.replace(plan.config, teachers=plan.trained_teachers)
    outcome = run_prepare(
        config,
        config_source=config_source,
        force=redo,
        progress=options.progress,
        echo=echo if options.progress else (lambda message: None),
    )
    fingerprint = outcome.manifest["fingerprint"]
    seconds = time.time() - started
    if outcome.up_to_date:
        echo(f"all: prepare: up to date, skipped ({outcome.out_dir})")
        result.reports.append(StageReport("prepare", "skipped"))
    else:
        echo(f"all: prepare: done in {seconds:.1f} s ({outcome.summary})")
        result.reports.append(StageReport("prepare", "done", seconds, outcome.summary))
    record = manifest.get("prepare")
    if not (outcome.up_to_date and record and record.get("hash") == fingerprint):
        manifest.set(
            "prepare",
            {
                "status": "finished",
                "hash": fingerprint,
                "finished": _now(),
                "seconds": round(seconds, 1),
                "outputs": [str(outcome.out_dir)],
            },
        )
    return digest({"stage": "prepare", "fingerprint": fingerprint})
