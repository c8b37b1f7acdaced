"""The README is the front door: its commands must exist and every option must be documented."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from wsdm_serve.cli import main as serve_main
from wsdm_train.cli import main as train_main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"^(python3 -m pytest[^\n]*)$", README, flags=re.M)
    assert commands, "README shows no test command"
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[0] in ci_lines


def _commands(group: click.Group, prefix: str):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", command


@pytest.mark.parametrize(
    ("name", "command"),
    [*_commands(serve_main, "wsdm-serve"), *_commands(train_main, "wsdm-train")],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_every_command_and_option_is_in_the_readme(name, command):
    assert f"`{name}" in README, f"README does not document `{name}`"
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert any(opt in README for opt in param.opts), (
                f"{name}: option {param.opts[0]} is not in the README"
            )


def test_the_readme_python_example_runs_as_written(tiny_model_dir, tmp_path):
    """Run the README's Python block in a folder laid out as it assumes (model, two tables)."""
    import shutil
    import subprocess
    import sys

    import pandas as pd

    from tests.conftest import ARENA_SAMPLE

    blocks = [
        block
        for block in re.findall(r"^```python\n(.*?)^```$", README, flags=re.M | re.S)
        if "wsdm_serve.predict" in block
    ]  # the other, the HTTP client's, is run by tests/test_client.py
    assert len(blocks) == 1, "README should show one Python example of predicting tables"
    shutil.copytree(tiny_model_dir, tmp_path / "model_save" / "final_model")
    (tmp_path / "data").mkdir()
    table = pd.read_parquet(ARENA_SAMPLE)
    table.iloc[:5].to_parquet(tmp_path / "data" / "day1.parquet")
    table.iloc[5:9].to_parquet(tmp_path / "data" / "day2.parquet")
    result = subprocess.run(
        [sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("rows,") == 2
    for name, ids in (("day1", table["id"][:5]), ("day2", table["id"][5:9])):
        written = pd.read_csv(tmp_path / "sub" / f"{name}.csv")
        assert written["id"].astype(str).tolist() == ids.astype(str).tolist()
        assert set(written["winner"]) <= {"model_a", "model_b"}
