"""The ``lrp`` command line. Only this package prints, exits or imports click/rich.

Commands import torch lazily, so ``lrp --help`` stays fast.
"""

from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lrp")
def main() -> None:
    """Explain PyTorch models with Layer-wise Relevance Propagation.

    \b
    Examples:
      lrp rules                 list the LRP rules and their parameters
      lrp composites            list the built-in composites
    """


@main.command()
def rules() -> None:
    """List every LRP rule with its formula and parameters.

    \b
    Example:
      lrp rules
    """
    from ..rules import RULES

    for name in RULES.names():
        cls = RULES.get(name)
        params = ", ".join(f"{key}={spec.default!r}" for key, spec in cls.params.items()) or "-"
        click.echo(f"{name:<11} {cls.formula}\n{'':<11} parameters: {params}")


@main.command()
def composites() -> None:
    """List the built-in composites and what each does.

    \b
    Example:
      lrp composites
    """
    from ..composite import builtin_names, load_composite

    for name in builtin_names():
        composite = load_composite(name)
        click.echo(f"{name:<27} {composite.description}")
