"""The ``lrp`` command line. Only this package prints, exits or imports click/rich.

May import every layer (runs, report, evaluate, render, data, sources, engine, the ground); nothing
imports it.

Commands import torch lazily, so ``lrp --help`` stays fast. One exception boundary
(:class:`LrpGroup`) turns every ``LrpError`` into its message and exit code.
"""

from __future__ import annotations

import sys
import traceback

import click

from .. import __version__
from ..errors import LrpError
from . import console as _console


class _ClosedStream:
    """Stands in for a standard stream that was closed before lrp started (``>&-``, ``<&-``: Python
    then has ``sys.stdout`` None): using it is a named user error, not an AttributeError."""

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, error: LrpError):
        self.error = error

    @property
    def buffer(self):
        raise self.error

    def write(self, *_):
        raise self.error

    writelines = read = readline = readlines = __iter__ = write

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        import io

        raise io.UnsupportedOperation("the stream is closed")

    def flush(self) -> None:
        pass


def _guard_closed_streams() -> None:
    from ..errors import InputError, OutputError

    if sys.stdout is None:
        sys.stdout = _ClosedStream(OutputError("stdout is closed: results have nowhere to go", hint="give -o FILE, or run with stdout open (> FILE)"))
    if sys.stdin is None:
        sys.stdin = _ClosedStream(InputError("stdin is closed: there are no rows to read from -", hint="give a CSV file, or pipe rows in (< FILE)"))


def _write_failed(exc: OSError) -> bool:
    from ..outputs import WRITE_ERRNOS

    return exc.errno in WRITE_ERRNOS


_VERBOSE = "lrp.verbose"


def _count_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value:
        ctx.meta[_VERBOSE] = ctx.meta.get(_VERBOSE, 0) + value  # meta is shared by every nested context


def _verbosity(ctx: click.Context) -> int:
    """-v given before the command (``lrp -v explain``) or after it (``lrp explain ... -v``)."""
    return ctx.params.get("verbose", 0) + ctx.meta.get(_VERBOSE, 0)


def accept_verbose_everywhere(command: click.Command) -> None:
    """Give ``command`` (and a group's subcommands) the -v/--verbose option the error hint asks for."""
    if not any("-v" in param.opts for param in command.params):
        command.params.append(
            click.Option(
                ["-v", "--verbose"], count=True, expose_value=False, callback=_count_verbose,
                help="Show tracebacks for errors (the same as lrp -v COMMAND).",
            )
        )
    for sub in getattr(command, "commands", {}).values():
        accept_verbose_everywhere(sub)


def _show_library_warnings() -> None:
    """The library's LrpWarnings (a cache that cannot be used) are warning lines like the CLI's own."""
    import warnings

    from ..errors import LrpWarning

    python_way = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, LrpWarning):
            _console.warn(str(message))
        else:
            python_way(message, category, filename, lineno, file, line)

    if getattr(python_way, "__name__", "") != "show":
        warnings.showwarning = show


class LrpGroup(click.Group):
    """Maps LrpError kinds to exit codes (design.md section 5); tracebacks only with -v or LRP_DEBUG=1."""

    def invoke(self, ctx: click.Context):
        _guard_closed_streams()
        _show_library_warnings()
        try:
            result = super().invoke(ctx)
            if not isinstance(sys.stdout, _ClosedStream):
                sys.stdout.flush()  # a full disk behind `> FILE` fails here, named, not at interpreter exit
            return result
        except LrpError as exc:
            if _console.debug_enabled(_verbosity(ctx)):
                traceback.print_exc()
            _console.error(exc.message, exc.hint)
            sys.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:  # e.g. `lrp composites schema | head`: the reader left; not an error
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as exc:
            if not _write_failed(exc):
                return self._internal(ctx, exc)
            # the library names its own files (OutputError); what reaches here unnamed is stdout
            where = exc.filename if exc.filename is not None else "stdout"
            if _console.debug_enabled(_verbosity(ctx)):
                traceback.print_exc()
            _console.error(f"cannot write {where}: {exc.strerror}", "make room on that disk, or send the results elsewhere (-o FILE)")
            _quiet_stdout()
            sys.exit(2)
        except KeyboardInterrupt:
            _console.error("interrupted; finished outputs are kept (rerun with --resume to continue)")
            sys.exit(130)
        except Exception as exc:  # an internal error: a short message, the traceback on request
            self._internal(ctx, exc)

    @staticmethod
    def _internal(ctx: click.Context, exc: BaseException) -> None:
        if _console.debug_enabled(_verbosity(ctx)):
            traceback.print_exc()
        _console.error(f"internal error: {type(exc).__name__}: {exc}", "rerun with -v (or LRP_DEBUG=1) for the traceback")
        sys.exit(1)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush of what could not be written stays quiet."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


@click.group(cls=LrpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lrp")
@click.option("-v", "--verbose", count=True, help="Show tracebacks for errors.")
def main(verbose: int) -> None:
    """Explain PyTorch models with Layer-wise Relevance Propagation.

    \b
    Examples:
      lrp explain sample_models/shapes_minivgg/model.yaml sample_models/shapes_minivgg/images -o out
      lrp inspect sample_models/shapes_minivgg/model.yaml
      lrp check-conservation sample_models/digits_cnn/model.yaml --random 8 -c lrp_0
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
    from pathlib import Path

    listing = Path(__file__).resolve().parent.parent / "engine" / "rules" / "rules.txt"  # no torch to import: see rules_text()
    click.echo(listing.read_text(encoding="utf-8"), nl=False)


@main.group(invoke_without_command=True)
@click.pass_context
def composites(ctx: click.Context) -> None:
    """List the built-in composites, show one as YAML, or print the JSON Schema.

    \b
    Examples:
      lrp composites
      lrp composites show epsilon_gamma_box > my_composite.yaml
      lrp composites schema > composite.schema.json
    """
    if ctx.invoked_subcommand is not None:
        return
    from pathlib import Path

    listing = Path(__file__).resolve().parent.parent / "engine" / "rules" / "composites.txt"  # no torch: see composites_text()
    click.echo(listing.read_text(encoding="utf-8"), nl=False)


@composites.command("show")
@click.argument("name")
def composites_show(name: str) -> None:
    """Print a built-in composite's YAML, ready to copy and edit.

    \b
    Example:
      lrp composites show epsilon-plus-flat
    """
    from ..engine.composite_yaml import BUILTINS, load_composite

    load_composite(name)  # resolves spellings, errors with suggestions
    click.echo(BUILTINS.get(name).read_text(encoding="utf-8"), nl=False)


@composites.command("schema")
def composites_schema() -> None:
    """Print the JSON Schema of composite files (for editors that check YAML as you type).

    \b
    Example:
      lrp composites schema > composite.schema.json
    """
    import json

    from ..engine.composite_yaml import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


from .explain import explain  # noqa: E402  (registered after the group exists)
from .check import check_conservation  # noqa: E402
from .inspect import inspect  # noqa: E402
from .merge import merge  # noqa: E402

main.add_command(explain)
main.add_command(check_conservation)
main.add_command(inspect)
main.add_command(merge)
from .compare import compare  # noqa: E402

main.add_command(compare)
from .evaluate import evaluate  # noqa: E402

main.add_command(evaluate)
from .init import init  # noqa: E402

main.add_command(init)
from .report import report  # noqa: E402

main.add_command(report)
from .concepts import concepts  # noqa: E402

main.add_command(concepts)
from .spray import spray  # noqa: E402

main.add_command(spray)

for _command in main.commands.values():
    accept_verbose_everywhere(_command)
