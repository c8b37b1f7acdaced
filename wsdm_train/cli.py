"""`wsdm-train`: the stages that reproduce the released model.

Every stage reads one configuration: a preset (`reference`, `tiny`, `small`) or a YAML file, plus
`--set section.field=value` overrides. The commands live in :mod:`wsdm_train.commands`; heavy
libraries are imported inside them so `wsdm-train --help` is instant.
"""

from __future__ import annotations

import logging
import sys

import click

from wsdm_serve import __version__

from .commands.data import prepare
from .commands.export import merge, quantize
from .commands.pipeline import all_stages
from .commands.training import distill, finetune, pretrain, teacher_predict


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsdm-train")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or notes; errors and the summary only.")
@click.pass_context
def main(ctx: click.Context, quiet: bool) -> None:
    """Reproduce the training of the released judge, stage by stage."""
    logging.basicConfig(
        level=logging.ERROR if quiet else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("transformers", "huggingface_hub", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    ctx.obj = {"quiet": quiet}


for command in (prepare, all_stages, pretrain, finetune, teacher_predict, distill, merge, quantize):
    main.add_command(command)

if __name__ == "__main__":
    main()
