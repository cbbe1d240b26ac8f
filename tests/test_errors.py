"""Every error kind carries the exit code of design.md section 5 (one table-driven test)."""

from __future__ import annotations

import pytest

from lrpcli import errors


@pytest.mark.parametrize(
    "kind, code",
    [
        (errors.LrpError, 1),
        (errors.UsageError, 2),
        (errors.ConfigError, 3),
        (errors.ModelError, 4),
        (errors.InputError, 5),
        (errors.CheckFailed, 6),
    ],
)
def test_exit_codes(kind, code):
    assert kind("x").exit_code == code
    assert issubclass(kind, errors.LrpError)


def test_unsupported_op_is_a_model_error_with_the_op_node_and_module():
    error = errors.UnsupportedOpError("exp", "exp_1", "block.2", "MyGate")
    assert error.exit_code == 4
    assert "'exp'" in str(error) and "exp_1" in str(error) and "'block.2' (MyGate)" in str(error)
    assert "hint" in str(error)


def test_config_error_names_source_line_and_hint():
    error = errors.ConfigError("unknown key 'x'", source="c.yaml", line=3, key="x", hint="did you mean 'y'?")
    assert str(error).startswith("c.yaml:3: unknown key 'x'")
    assert "did you mean 'y'?" in str(error)


@pytest.mark.parametrize("argv", [["-v", "composites", "show", "nope"], ["composites", "show", "nope", "-v"], ["composites", "show", "nope", "--verbose"]])
def test_verbose_works_before_and_after_the_command(argv):
    """The error hint says 'rerun with -v': every command accepts it where a user types it (issue 24, item 8)."""
    from click.testing import CliRunner

    from lrpcli.cli import main

    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 3, result.output
    assert "No such option" not in result.stderr
    assert "Traceback" in result.stderr and "unknown composite 'nope'" in result.stderr


def test_every_command_takes_verbose():
    import click

    from lrpcli.cli import main

    def commands(group):
        for command in group.commands.values():
            yield command
            if isinstance(command, click.Group):
                yield from commands(command)

    for command in commands(main):
        assert any("-v" in param.opts for param in command.params), command.name
