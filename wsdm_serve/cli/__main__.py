"""`python -m wsdm_serve.cli`: the same as the `wsdm-serve` command."""

from . import main

main()
