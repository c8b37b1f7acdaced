"""Where the configured input tables are, and whether post-pretraining has any data.

Small on purpose: the pipeline and the stages ask these questions before anything heavy is imported.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config


def data_path(config: Config, name: str) -> Path:
    """An input file named in the config: relative to ``paths.data_dir`` unless absolute."""
    path = Path(name)
    return path if path.is_absolute() else Path(config.paths.data_dir) / path


def pretrain_data_gap(config: Config) -> str | None:
    """Why there will be no post-pretraining rows, or None when the ut table is configured and there."""
    if not config.prepare.ut_file:
        return "prepare.ut_file is null"
    path = data_path(config, config.prepare.ut_file)
    return None if path.is_file() else f"{path} not found (prepare.ut_file)"
