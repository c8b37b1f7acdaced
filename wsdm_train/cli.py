"""`wsdm-train`: the stages that reproduce the released model."""

from __future__ import annotations

import click

from wsdm_serve import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsdm-train")
def main() -> None:
    """Reproduce the training of the released judge, stage by stage."""


# Training stages (pretrain, finetune, teacher-predict, distill).
from .stage_commands import add_stage_commands  # noqa: E402

add_stage_commands(main)

if __name__ == "__main__":
    main()
