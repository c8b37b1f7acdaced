"""`wsdm-train`: the stages that reproduce the released model."""

from __future__ import annotations

import click

from wsdm_serve import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsdm-train")
def main() -> None:
    """Reproduce the training of the released judge, stage by stage."""


# Merging the fold adapters and quantizing the merged model.
from .model_commands import add_model_commands  # noqa: E402

add_model_commands(main)

if __name__ == "__main__":
    main()
