"""Options shared by the `wsdm-train` commands: one ``--config``/``--set`` mechanism for all of them.

Every command reads the same configuration (``wsdm_train.config``): a preset or a YAML file plus
``--set section.field=value`` overrides. The run options (device, DeepSpeed, resume, quiet) are
choices about how a stage runs, not part of the recipe, so they are options and not config fields.
"""

from __future__ import annotations

import click

from wsdm_serve.quiet import hide_library_progress_bars

CONFIG_HELP = "Preset name (reference, tiny, small) or a YAML file (which may start with `base: reference`)."


def config_options(command):
    """--config and --set; the command receives ``config_name`` and ``overrides``."""
    command = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.FIELD=VALUE",
        help="Override one configuration field (repeatable), e.g. --set prepare.n_folds=3.",
    )(command)
    command = click.option(
        "--config", "config_name", default="reference", show_default=True, help=CONFIG_HELP
    )(command)
    return command


def run_options(command, *, resume: bool = True, deepspeed: bool = True):
    """How a stage runs: DeepSpeed, device, resume, quiet (not part of the recipe)."""
    options = []
    if deepspeed:
        options.append(
            click.option(
                "--deepspeed",
                default="preset",
                show_default=True,
                help="DeepSpeed config: zero2, zero3, a JSON file, or none; 'preset' uses the stage's setting.",
            )
        )
    options.append(
        click.option(
            "--device", default="auto", show_default=True, help="auto, cpu, or cuda (one GPU per process)."
        )
    )
    if resume:
        options.append(
            click.option(
                "--resume/--no-resume",
                default=True,
                show_default=True,
                help="Continue from the run's last/ checkpoint when there is one.",
            )
        )
    options.append(click.option("--quiet", is_flag=True, help="No progress bars or info lines (as -q)."))
    for option in reversed(options):
        command = option(command)
    return command


def quiet_requested(flag: bool) -> bool:
    """``--quiet`` on the command or ``-q`` on the group."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    quiet = flag or bool(root is not None and isinstance(root.obj, dict) and root.obj.get("quiet"))
    if quiet:
        hide_library_progress_bars()
    return quiet


def load(config_name: str, overrides: tuple[str, ...] | list[str], field_overrides: list = ()):
    """The configuration: ``--config``, then every ``--set``, then the command's field options."""
    from ..config import load_config

    return load_config(config_name, [*overrides, *field_overrides])


def pipeline_run_options(command):
    """The run options of `wsdm-train all`, which always resumes what it can."""
    return run_options(command, resume=False)


def scoring_run_options(command):
    """The run options of `wsdm-train teacher-predict`: scoring has no DeepSpeed engine or resume
    state (a finished prediction file is kept; --force recomputes it)."""
    return run_options(command, resume=False, deepspeed=False)
