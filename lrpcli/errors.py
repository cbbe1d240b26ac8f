"""Errors raised by the library, one kind per exit code (design.md section 5).

The library never prints or exits: it raises one of these, and the CLI turns the
kind into an exit code and a message. Each error says what went wrong and, where
it can, what to do about it (``hint``).
"""

from __future__ import annotations


class LrpError(Exception):
    """Base of every error lrpcli raises on purpose. Exit code 1 (internal)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class UsageError(LrpError):
    """A bad argument value or arguments that exclude each other."""

    exit_code = 2


class OutputError(UsageError):
    """The output cannot be written where -o says: a read-only or full disk, no permission, a file where
    a folder must be (or the reverse), a symbolic link that leads out of the output folder. Exit 2: the
    user must point -o elsewhere or make room."""


class ConfigError(LrpError):
    """A composite file or dict is invalid: YAML, unknown key/rule/composite, bad value.

    ``source`` names the file (or ``<dict>``/``<built-in NAME>``), ``line`` the
    1-based line where the problem is when known, ``key`` the offending key.
    """

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ):
        self.source = source
        self.line = line
        self.key = key
        where = ""
        if source:
            where = f"{source}:{line}: " if line else f"{source}: "
        super().__init__(where + message, hint=hint)


class ModelError(LrpError):
    """The model cannot be loaded or captured as a graph."""

    exit_code = 4


class UnsupportedOpError(ModelError):
    """The captured graph holds an op that no LRP rule covers."""

    def __init__(self, op: str, node: str, module: str, module_type: str, hint: str | None = None):
        self.op = op
        self.node = node
        self.module = module
        self.module_type = module_type
        where = f"module '{module}' ({module_type})" if module else "the model's top-level forward"
        super().__init__(
            f"unsupported op '{op}' at graph node '{node}' in {where}",
            hint=hint
            or (
                "lrpcli has no LRP rule for this op. Rewrite that part of the model with "
                "supported layers (conv, linear, batch-norm, pooling, relu-like activations, "
                "add/cat/reshape), or explain a sub-model that stops before it; "
                "`lrp rules` lists what is covered."
            ),
        )


class InputError(LrpError):
    """Input data problems: unreadable files, bad rows, shape mismatch."""

    exit_code = 5


class CheckFailed(LrpError):
    """A check (e.g. conservation) failed."""

    exit_code = 6


class LrpWarning(UserWarning):
    """Something the user should know that does not stop the run (a cache that cannot be used); the CLI
    shows it as a warning line, the Python API leaves it to the warnings module."""
