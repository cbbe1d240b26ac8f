"""Output paths: every file lands inside the output folder, whatever the input's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrpcli.errors import InputError
from lrpcli.outputs import inside


@pytest.mark.parametrize("relative", ["a.png", "sub/dir/a.png", "sub/../a.png", "./a.png"])
def test_names_inside_the_folder_are_kept(tmp_path, relative):
    path = inside(tmp_path / "out", relative)
    assert path.is_absolute()
    assert (tmp_path / "out").resolve() in path.parents


@pytest.mark.parametrize("relative", ["../a.png", "sub/../../a.png", "/etc/a.png", ".", ".."])
def test_names_that_would_escape_are_refused(tmp_path, relative):
    with pytest.raises(InputError, match="escape"):
        inside(tmp_path / "out", relative)


def test_a_relative_folder_follows_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert inside(Path("out"), "a.png") == tmp_path / "out" / "a.png"
