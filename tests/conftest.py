"""Shared fixtures: the real Qwen2.5 tokenizer, real arena rows, and tiny random Qwen2 models."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"
TOKENIZER_DIR = ASSETS / "qwen2.5-tokenizer"
ARENA_SAMPLE = ASSETS / "arena_hard_sample.parquet"
PANDALM_TRAIN = ASSETS / "pandalm_train.parquet"
PANDALM_LMSYS = ASSETS / "pandalm_lmsys_format.csv"
# The tiny training preset's tables: the same pairs split by prompt, so they share no pair.
TINY_TRAIN = ASSETS / "pandalm_tiny_train.parquet"
TINY_LMSYS = ASSETS / "pandalm_tiny_lmsys.csv"


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Qwen2 judge with the real tokenizer; weights large enough for varied scores."""
    from wsdm_serve.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", TOKENIZER_DIR, seed=0, init_std=0.5)


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny model that a test may break."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def console_script(name: str) -> str:
    """Path of an installed console script (tests exercise the real entry points)."""
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.fail(f"console script {name} is not installed; run `pip install -e .[dev]`")
    return found


def run_cli(
    name: str, *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run an installed console script; ``env`` adds variables to this process's environment."""
    return subprocess.run(
        [console_script(name), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={**os.environ, **env} if env else None,
    )


def run_cli_loud(name: str, *args: str | Path) -> subprocess.CompletedProcess:
    """``run_cli`` without the variables a ``-q`` run inside this test process (CliRunner) leaves set,
    for tests that check that progress bars do show without ``-q``."""
    from wsdm_serve.quiet import QUIET_VARIABLES

    clean = {key: value for key, value in os.environ.items() if key not in QUIET_VARIABLES}
    command = [console_script(name), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=clean, timeout=600)


def pytest_configure(config) -> None:
    """Under pytest-xdist every worker, and every command it starts, computes on one thread.

    Two workers that each spread tiny-model math over all cores oversubscribe a small machine badly
    (measured: 57 s instead of 3.5 s for the same rows).
    """
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)
