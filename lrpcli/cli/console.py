"""The one stderr console: messages, warnings, tables and progress never touch stdout.

Messages are printed as text: anything that comes from a user (a file name like
``photo[final].png``, a hint like ``pip install 'lrpcli[torchvision]'``) is escaped, never
read as rich markup."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, highlight=False, soft_wrap=True)
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 160  # logs and CI output get whole tables, not 80-column wraps


def debug_enabled(verbose: int = 0) -> bool:
    return verbose > 0 or os.environ.get("LRP_DEBUG", "") not in ("", "0")


def error(message: str, hint: str | None = None) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    if hint:
        console.print(f"[dim]hint:[/] {escape(hint)}", markup=True, highlight=False)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(message)}", markup=True, highlight=False)


def failed(label: str, message: str) -> None:
    """One failed input under a run's summary (``label`` coloured, the message printed as it is)."""
    console.print(f"  [red]{label}:[/] {escape(message)}", markup=True, highlight=False)


def note(message: str) -> None:
    """What lrp did to the model that a user should know (a folded batch-norm, a decomposed attention)."""
    console.print(f"[dim]note:[/] {escape(message)}", markup=True, highlight=False)


def info(message: str) -> None:
    console.print(message, markup=False, highlight=False)


@contextlib.contextmanager
def progress(label: str, total: int | None, quiet: bool = False) -> Iterator["_Advance"]:
    """A transient progress bar on stderr (off with -q or when stderr is no terminal); yields advance(n).
    ``total`` None: a stream of unknown length (counts, no bar to fill)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield _Advance(bar, task, label)


class _Advance:
    """advance(n) moves the bar; advance.stage("capturing the model") says what the run is doing meanwhile."""

    def __init__(self, bar, task, label: str):
        self.bar, self.task, self.label = bar, task, label

    def __call__(self, n: int) -> None:
        self.bar.advance(self.task, n)

    def stage(self, text: str | None) -> None:
        self.bar.update(self.task, description=text or self.label)
