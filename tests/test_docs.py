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
