"""Where each stage reads its processed data and writes its runs, and which folds a command means.

Inputs follow the processed-data contract written by ``wsdm-train prepare``; outputs land under
``paths.model_dir``::

    student/pretrain/{best,final,last}/ + metrics.jsonl
    teachers/{name}/pretrain/...
    teachers/{name}/fold{k}/{best,final,last}/ + metrics.jsonl + predictions.parquet
    student/fold{k}/{best,final,last}/ + metrics.jsonl
"""

from __future__ import annotations

import re
from pathlib import Path

from wsdm_serve.errors import WsdmError

from ..config import Config


class Layout:
    """The paths of one configuration's processed data and training runs."""

    def __init__(self, config: Config) -> None:
        self.processed = Path(config.paths.processed_dir)
        self.models = Path(config.paths.model_dir)

    def student_fold(self, fold: int, split: str) -> Path:
        return self.processed / "student" / f"fold{fold}" / f"{split}.parquet"

    def teacher_fold(self, name: str, fold: int, split: str) -> Path:
        return self.processed / "teachers" / name / f"fold{fold}" / f"{split}.parquet"

    def pretrain_data(self, role: str, name: str) -> Path:
        base = self.processed / "student" if role == "student" else self.processed / "teachers" / name
        return base / "pretrain.parquet"

    def pretrain_out(self, role: str, name: str) -> Path:
        return (
            self.models / "student" / "pretrain"
            if role == "student"
            else self.models / "teachers" / name / "pretrain"
        )

    def teacher_out(self, name: str, fold: int) -> Path:
        return self.models / "teachers" / name / f"fold{fold}"

    def student_out(self, fold: int) -> Path:
        return self.models / "student" / f"fold{fold}"

    def predictions(self, name: str, fold: int) -> Path:
        return self.teacher_out(name, fold) / "predictions.parquet"

    def folds(self, base: Path) -> list[int]:
        found = sorted(
            int(m.group(1)) for p in base.glob("fold*") if (m := re.fullmatch(r"fold(\d+)", p.name))
        )
        if not found:
            raise WsdmError(f"{base}: no fold folders; run `wsdm-train prepare` first")
        return found


def resolve_folds(choice: str, available: list[int]) -> list[int]:
    if choice == "all":
        return available
    try:
        folds = [int(part) for part in choice.split(",")]
    except ValueError:
        raise WsdmError(f"--fold {choice}: expected all, a fold number or a comma list") from None
    missing = [f for f in folds if f not in available]
    if missing:
        raise WsdmError(f"--fold {choice}: fold {missing[0]} not prepared (available: {available})")
    return folds
