"""Where inputs are read and outputs written, and what `wsdm-train prepare` makes of the inputs."""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from pydantic import field_validator

from wsdm_serve.truncation import TruncationConfig

from .types import Count, Int, NonNegative, section


@section
class PathsConfig:
    """Where inputs are read and outputs written; relative paths are relative to the current folder."""

    data_dir: str = "data"
    """Folder of the raw tables."""
    processed_dir: str = "data/processed"
    """What `wsdm-train prepare` writes."""
    model_dir: str = "model_save"
    """Where the training stages write; gives the default fold adapters and merge output."""


@section
class Budget:
    """Token budget of query + both responses, and the word cap applied to each response first."""

    token_budget: Count
    response_word_cap: NonNegative


BUDGETS = (
    "student_train",
    "student_dev",
    "student_pretrain",
    "teacher_train",
    "teacher_dev",
    "teacher_pretrain",
)
FoldGrouping = Literal["pair", "prompt", "none"]


def _budget(tokens: int, words: int):
    return field(default_factory=lambda: Budget(token_budget=tokens, response_word_cap=words))


@section
class PrepareConfig:
    """Inputs and budgets of `wsdm-train prepare` (reference section 1 and 2.2).

    Input files are relative to ``paths.data_dir`` unless absolute; ``null`` disables an extra
    table. A missing extra table is reported and skipped (the reference always had both).
    """

    train_file: str = "train.parquet"
    lmsys_file: str | None = "notie_lmsys.csv"
    ut_file: str | None = "ut_multi.csv"
    n_folds: Int = 5
    fold_seed: Int = 2025
    group_folds_by: FoldGrouping = "pair"
    """Rows of one pair (prompt and both responses, either order), or of one prompt, share a fold;
    none: split row by row, as the reference did."""
    query_word_cap: NonNegative = 256
    query_token_cap: NonNegative = 256
    student_train: Budget = _budget(2048, 1400)
    student_dev: Budget = _budget(10000, 4200)
    student_pretrain: Budget = _budget(1024, 1400)
    teacher_train: Budget = _budget(2048, 1400)
    teacher_dev: Budget = _budget(2048, 1400)
    teacher_pretrain: Budget = _budget(1024, 700)
    teacher_pretrain_max_words: Int | None = 1200
    """The teachers' ut data kept only prompts with fewer than this many space-separated pieces."""
    drop_extra_overlap: bool = True
    """Drop LMSYS/ut rows that are the same pair as a competition row (they would leak fold dev
    rows into training); the reference kept them (false)."""

    @field_validator("n_folds")
    @classmethod
    def _enough_folds(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"need at least 2 folds, got {value}")
        return value

    def truncation(self, budget: Budget) -> TruncationConfig:
        return TruncationConfig(
            token_budget=budget.token_budget,
            response_word_cap=budget.response_word_cap,
            query_word_cap=self.query_word_cap,
            query_token_cap=self.query_token_cap,
        )
