"""Writing in a thread pool or in the main thread (2-core CPUs) gives the same files, and write errors surface."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrpcli.runs import image_files
from lrpcli.runs import images as runner

from cli_support import lrp, minivgg, save_torchscript, write_image


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("writers")
    model = save_torchscript(minivgg(), root / "model.ts")
    for seed in range(10):  # more than one batch of 4 below
        write_image(root / "images" / f"img{seed}.png", seed)
    return model, root / "images"


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for folder in ("heatmaps", "relevance") for p in (out / folder).rglob("*") if p.is_file()}


def test_pool_and_inline_writers_write_the_same_files(inputs, tmp_path, monkeypatch):
    model, images = inputs
    written = {}
    for writers in (0, 2):
        monkeypatch.setattr(runner, "_writers", lambda device, n=writers: n)
        result = lrp("explain", model, images, "--batch-size", "4", "-q", out=tmp_path / str(writers))
        assert result.result.exit_code == 0, result.result.output
        written[writers] = _files(tmp_path / str(writers))
    assert len(written[0]) == 20 and written[0] == written[2]


@pytest.mark.parametrize("writers", [0, 2])
def test_a_failed_write_stops_the_run_with_the_error(inputs, tmp_path, monkeypatch, writers):
    model, images = inputs
    monkeypatch.setattr(runner, "_writers", lambda device: writers)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(image_files, "save_array", broken)
    result = lrp("explain", model, images, "--batch-size", "4", "-q", out=tmp_path / "o")
    assert result.result.exit_code != 0
    assert "disk full" in result.result.output + str(result.result.exception)
    assert not list((tmp_path / "o").rglob("*.npy"))


def test_two_core_cpus_write_in_the_main_thread(monkeypatch):
    import torch

    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    assert runner._writers(torch.device("cpu")) == 0 and runner._workers(None, 1000) == 0
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 16)
    assert runner._writers(torch.device("cpu")) == 2 and runner._workers(None, 1000) == 4
