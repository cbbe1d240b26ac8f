"""``python -m lrpcli.cli`` runs the ``lrp`` command."""

from . import main

main(prog_name="lrp")
