"""Outputs never replace what is not ours (issue 24, item 2).

``-o FILE``, ``--report``, ``--html``, ``--json FILE`` and ``--junit FILE`` used to be written to a temporary
file renamed over the target. Onto a symbolic link that replaced the link (``-o /dev/stdout`` printed
nothing), onto a device node it replaced the device (as root, ``-o /dev/null`` made the system's
/dev/null a regular file), an output naming an input (``--report rows.csv``) overwrote it, and a FIFO
planted in the output folder hung the run (``OUT/manifest.jsonl``) or crashed it (``OUT/.lock``).

Every case here works on files in a temporary folder (device nodes made with ``os.mknod`` there, links
pointing at ``/proc/self/fd/1`` rather than at the system's /dev/stdout), so that a regression cannot
damage the machine it runs on. Runs that could hang run in a child process with a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import lrp, refused

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_models"
TIMEOUT = 180  # seconds for a child lrp: a hang fails the test instead of stalling the suite


def lrp_child(*args, cwd: Path, timeout: float = TIMEOUT, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """``lrp ARGS`` in a child process; a run that does not end within ``timeout`` fails the test."""
    env = {**os.environ, "LRP_CACHE_DIR": "off", "COLUMNS": "200"}
    try:
        return subprocess.run(
            [sys.executable, "-m", "lrpcli.cli", *[str(a) for a in args]],
            cwd=cwd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"lrp {' '.join(map(str, args))} hung (no exit in {timeout} s); stderr so far: {exc.stderr!r}")


def needs_root(reason: str):
    return pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason=f"os.mknod of a device node needs root ({reason})")


def char_device(path: Path) -> Path:
    """A character device like /dev/null (1, 3), made in a temporary folder."""
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return path


def block_device(path: Path) -> Path:
    """A block device with a number from the range for local use (240): no disk stands behind it."""
    os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(240, 7))
    return path


def kind_of(path: Path) -> str:
    mode = os.lstat(path).st_mode
    for name, test in (("link", stat.S_ISLNK), ("file", stat.S_ISREG), ("char device", stat.S_ISCHR), ("block device", stat.S_ISBLK), ("fifo", stat.S_ISFIFO), ("folder", stat.S_ISDIR)):
        if test(mode):
            return name
    return "other"


@pytest.fixture()
def rows(tmp_path) -> dict[str, Path]:
    """A private copy of the diabetes sample (spec, weights, six rows): a test that overwrites one harms nothing shared."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(SAMPLES / "diabetes_mlp" / "model.ts", folder / "model.ts")
    shutil.copy(SAMPLES / "diabetes_mlp" / "model.yaml", folder / "model.yaml")
    lines = (SAMPLES / "diabetes_mlp" / "sample.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "rows.csv").write_text("".join(lines[:7]), encoding="utf-8")
    return {"spec": folder / "model.yaml", "weights": folder / "model.ts", "csv": folder / "rows.csv"}


@pytest.fixture()
def texts(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "texts"
    folder.mkdir()
    for name in ("bag.yaml", "bag.pt", "tokenizer.json"):
        shutil.copy(SAMPLES / "text_sentiment" / name, folder / name)
    (folder / "texts.txt").write_text("a wonderful, warm film\na dull and tired plot\n", encoding="utf-8")
    return {"spec": folder / "bag.yaml", "weights": folder / "bag.pt", "txt": folder / "texts.txt"}


# what each writer's file must hold, and the command that writes it to TARGET
WRITERS = {
    "explain rows -o": (lambda r, t, target: ["explain", r["spec"], r["csv"], "-q", "--no-report", "-o", target], "id,"),
    "explain rows --report": (lambda r, t, target: ["explain", r["spec"], r["csv"], "-q", "-o", r["csv"].with_name("res.csv"), "--report", target], "<html"),
    "explain texts -o": (lambda r, t, target: ["explain", t["spec"], t["txt"], "-q", "--no-report", "-o", target], '"words"'),
    "explain texts --html": (lambda r, t, target: ["explain", t["spec"], t["txt"], "-q", "--no-report", "--format", "jsonl", "--html", target], "<html"),
    "check-conservation --json": (lambda r, t, target: ["check-conservation", r["spec"], "--random", "2", "-q", "--json", target], '"samples"'),
    "check-conservation --junit": (lambda r, t, target: ["check-conservation", r["spec"], "--random", "2", "-q", "--junit", target], "<testsuite"),
    "inspect --json": (lambda r, t, target: ["inspect", r["spec"], "--json", target], '"layers"'),
}


def _run_writer(name: str, rows, texts, target: Path):
    args, expected = WRITERS[name]
    run = lrp(*args(rows, texts, target))
    assert run.code in (0, 6), run.describe()  # 6: a conservation check that fails is still a written report
    return run, expected


# --------------------------------------------------------------------------- symbolic links


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_an_output_onto_a_link_writes_the_file_it_leads_to_and_keeps_the_link(writer, rows, texts, tmp_path):
    real = tmp_path / "elsewhere" / "real.out"
    real.parent.mkdir()
    real.write_text("old\n", encoding="utf-8")
    link = tmp_path / "link.out"
    link.symlink_to(real)
    _, expected = _run_writer(writer, rows, texts, link)
    assert kind_of(link) == "link" and os.readlink(link) == str(real)
    assert expected in real.read_text(encoding="utf-8")
    assert not list(tmp_path.glob(".link.out*")) and not list(real.parent.glob(".*.tmp"))  # no temporaries left


def test_an_output_onto_a_dangling_link_makes_the_file_it_names(rows, tmp_path):
    link = tmp_path / "res.csv"
    link.symlink_to(tmp_path / "made.csv")
    run = lrp("explain", rows["spec"], rows["csv"], "-q", "--no-report", "-o", link)
    assert run.code == 0, run.describe()
    assert kind_of(link) == "link" and (tmp_path / "made.csv").read_text(encoding="utf-8").startswith("id,")


def test_o_onto_a_link_to_stdout_prints_the_results(rows, tmp_path):
    """``-o /dev/stdout`` is a link to /proc/self/fd/1 on Linux: the rows must come out on stdout."""
    if not os.path.exists("/proc/self/fd/1"):
        pytest.skip("no /proc/self/fd on this system")
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")  # what /dev/stdout is, but ours to lose
    done = lrp_child("explain", rows["spec"], rows["csv"], "-q", "-o", link, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("id,") and len(done.stdout.splitlines()) == 7, done.stdout
    assert kind_of(link) == "link"
    assert not (tmp_path / "stdout.report.html").exists()  # no page beside a stream (as on stdout)


def test_o_onto_a_link_to_stdout_redirected_to_a_file_appends_there(rows, tmp_path):
    """``lrp ... -o /dev/stdout >> log``: the rows go where stdout goes (appended), the file is not swapped."""
    if not os.path.exists("/proc/self/fd/1"):
        pytest.skip("no /proc/self/fd on this system")
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    log = tmp_path / "log.txt"
    log.write_text("before\n", encoding="utf-8")
    with open(log, "a", encoding="utf-8") as handle:
        done = lrp_child("explain", rows["spec"], rows["csv"], "-q", "-o", link, cwd=tmp_path, stdout=handle)
    assert done.returncode == 0, done.stderr
    text = log.read_text(encoding="utf-8")
    assert text.startswith("before\nid,"), text


# --------------------------------------------------------------------------- FIFOs and device nodes


@pytest.mark.parametrize("command", ["explain rows -o", "report --report"])
def test_an_output_onto_a_fifo_is_written_into_it(command, rows, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    if command == "explain rows -o":
        args, expected = ["explain", rows["spec"], rows["csv"], "-q", "-o", fifo], "id,"
    else:
        results = tmp_path / "res.csv"
        first = lrp("explain", rows["spec"], rows["csv"], "-q", "--no-report", "-o", results)
        assert first.code == 0, first.describe()
        args, expected = ["report", results, "--report", fifo], "<html"
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    try:
        done = lrp_child(*args, cwd=tmp_path)
        try:
            received, _ = reader.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"nothing was written into the FIFO (lrp exited {done.returncode}: {done.stderr})")
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert done.returncode == 0, done.stderr
    assert expected in received
    assert kind_of(fifo) == "fifo"
    assert not (tmp_path / "pipe.report.html").exists()


@needs_root("a character device")
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_an_output_onto_a_character_device_stays_a_device(writer, rows, texts, tmp_path):
    device = char_device(tmp_path / "null")
    _run_writer(writer, rows, texts, device)
    assert kind_of(device) == "char device"
    assert os.stat(device).st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "null", "texts"]  # no page or temporary beside it


@needs_root("a block device")
@pytest.mark.parametrize("option", ["-o", "--report"])
def test_an_output_onto_a_block_device_is_refused(option, rows, tmp_path):
    device = block_device(tmp_path / "disk")
    extra = ["--no-report"] if option == "-o" else ["-o", tmp_path / "res.csv"]
    run = lrp("explain", rows["spec"], rows["csv"], "-q", *extra, option, device)
    refused(run, 2, str(device), "block device")
    assert kind_of(device) == "block device"


def test_an_output_onto_a_folder_is_refused(rows, tmp_path):
    folder = tmp_path / "page"
    folder.mkdir()
    run = lrp("check-conservation", rows["spec"], "--random", "2", "-q", "--json", folder)
    refused(run, 2, str(folder), "folder")
    assert kind_of(folder) == "folder" and not list(folder.iterdir())


# --------------------------------------------------------------------------- an output that is an input


def _same_file_cases():
    return {
        "--report is the input rows": (lambda r, t, tmp: ["explain", r["spec"], r["csv"], "-q", "-o", tmp / "res.csv", "--report", r["csv"]], "csv", "--report"),
        "-o is the input rows": (lambda r, t, tmp: ["explain", r["spec"], r["csv"], "-q", "--no-report", "-o", r["csv"]], "csv", "-o"),
        "-o is the model's weights": (lambda r, t, tmp: ["explain", r["spec"], r["csv"], "-q", "--no-report", "-o", r["weights"]], "weights", "-o"),
        "--report is the model spec": (lambda r, t, tmp: ["explain", r["spec"], r["csv"], "-q", "-o", tmp / "res.csv", "--report", r["spec"]], "spec", "--report"),
        "-o is a link to the input": (lambda r, t, tmp: ["explain", r["spec"], r["csv"], "-q", "--no-report", "-o", _link(tmp / "alias.csv", r["csv"])], "csv", "-o"),
        "--json is the model spec": (lambda r, t, tmp: ["check-conservation", r["spec"], "--random", "2", "-q", "--json", r["spec"]], "spec", "--json"),
        "--junit is the input rows": (lambda r, t, tmp: ["check-conservation", r["spec"], r["csv"], "-q", "--junit", r["csv"]], "csv", "--junit"),
        "inspect --json is the weights": (lambda r, t, tmp: ["inspect", r["spec"], "--json", r["weights"]], "weights", "--json"),
        "--html is the input texts": (lambda r, t, tmp: ["explain", t["spec"], t["txt"], "-q", "--no-report", "--format", "jsonl", "--html", t["txt"]], "txt", "--html"),
        "texts -o is the tokenizer": (lambda r, t, tmp: ["explain", t["spec"], t["txt"], "-q", "--no-report", "-o", t["spec"].with_name("tokenizer.json")], "tokenizer", "-o"),
    }


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("case", sorted(_same_file_cases()))
def test_an_output_that_is_an_input_is_refused_naming_both(case, rows, texts, tmp_path):
    args, which, option = _same_file_cases()[case]
    victim = {**texts, **rows, "tokenizer": texts["spec"].with_name("tokenizer.json")}[which]
    before = victim.read_bytes()
    run = lrp(*args(rows, texts, tmp_path))
    refused(run, 2, option, victim.name)
    assert victim.read_bytes() == before
    assert not (tmp_path / "res.csv").exists()  # refused before anything was written


def test_report_onto_its_own_result_file_is_a_usage_error(rows, tmp_path):
    results = tmp_path / "res.csv"
    first = lrp("explain", rows["spec"], rows["csv"], "-q", "--no-report", "-o", results)
    assert first.code == 0, first.describe()
    before = results.read_bytes()
    run = lrp("report", results, "--report", results)
    refused(run, 2, "--report", "res.csv")
    assert results.read_bytes() == before


def test_init_onto_its_composite_file_is_refused(rows, tmp_path):
    from lrpcli.engine.composite_yaml import BUILTINS

    composite = tmp_path / "mine.yaml"
    composite.write_bytes(BUILTINS.get("epsilon").read_bytes())
    before = composite.read_bytes()
    run = lrp("init", rows["weights"], "-c", composite, "-o", composite, "--force")
    refused(run, 2, "-o", "mine.yaml")
    assert composite.read_bytes() == before


# --------------------------------------------------------------------------- FIFOs inside OUT


@pytest.mark.parametrize("name", ["manifest.jsonl", ".lock", "summary.partial.csv"])
def test_a_fifo_in_the_output_folder_is_named_not_waited_on(name, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    shutil.copy(SAMPLES / "shapes_minivgg" / "images" / "circle_02.png", images / "circle_02.png")
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / name)
    done = lrp_child("explain", SAMPLES / "shapes_minivgg" / "model.yaml", images, "-q", "-o", out, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    said = " ".join(done.stderr.split())
    assert name in said and "not a regular file" in said, done.stderr
    assert kind_of(out / name) == "fifo"


def test_a_report_page_that_is_a_fifo_is_not_read_for_its_run(rows, tmp_path):
    """``lrp report rel.csv`` carries the run over from the page it replaces: a FIFO there must not be read."""
    results = tmp_path / "res.csv"
    first = lrp("explain", rows["spec"], rows["csv"], "-q", "--no-report", "-o", results)
    assert first.code == 0, first.describe()
    fifo = tmp_path / "res.report.html"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    try:
        done = lrp_child("report", results, cwd=tmp_path, timeout=120)
        received, _ = reader.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the page was never written into the FIFO")
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert done.returncode == 0, done.stderr
    assert "<html" in received and kind_of(fifo) == "fifo"
