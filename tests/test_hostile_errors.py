"""User errors that used to be internal errors (exit 1), and leftovers (issue 18, items 12 and 14), and a
fuzz test of the config and CSV parsers.

Each test builds what a careless user would give ``lrp`` and checks the error is named with its kind's
exit code (design.md section 5) and no traceback, or that nothing is left behind or written elsewhere.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from cli_support import lrp, minivgg, read_csv, refused, save_safetensors, save_torchscript, tiny_gray, write_image
from lrpcli.sources.architectures import MLP

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("errors")
    save_torchscript(minivgg(), root / "m.ts")
    save_safetensors(minivgg(), root / "w.safetensors")
    save_torchscript(tiny_gray(), root / "gray.ts")
    write_image(root / "imgs" / "a.png", 0)
    torch.manual_seed(0)
    save_torchscript(MLP(3, (4,), 2).eval(), root / "mlp.ts")
    (root / "rows.csv").write_text("a,b,c\n1,2,3\n4,5,6\n", encoding="utf-8")
    return root


# --------------------------------------------------------------------------- 12: the exit codes, one table


def _damaged_name(world: Path, tmp: Path) -> Path:
    """A TorchScript zip whose central directory holds a file name that is not UTF-8 (flag bit 11 set)."""
    data = bytearray((world / "m.ts").read_bytes())
    entry = data.find(b"PK\x01\x02")
    name_length = int.from_bytes(data[entry + 28 : entry + 30], "little")
    data[entry + 46 : entry + 46 + min(name_length, 6)] = b"\xbb" * min(name_length, 6)
    (tmp / "damaged.ts").write_bytes(bytes(data))
    return tmp / "damaged.ts"


def _truncated_directory(world: Path, tmp: Path) -> Path:
    data = (world / "m.ts").read_bytes()
    (tmp / "truncated.ts").write_bytes(data[: data.rfind(b"PK\x01\x02") + 10])
    return tmp / "truncated.ts"


def _package(tmp: Path, monkeypatch, body: str) -> str:
    name = f"lrp_test_arch_{abs(hash(body)) % 10**8}"
    (tmp / "pkgs" / name).mkdir(parents=True)
    (tmp / "pkgs" / name / "__init__.py").write_text(body, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp / "pkgs"))
    return name


def _file(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _spec(world: Path, tmp: Path, inputs: str) -> Path:
    (tmp / "spec.yaml").write_text(f"model: {world / 'm.ts'}\ninput: {{{inputs}}}\n", encoding="utf-8")
    return tmp / "spec.yaml"


# name -> (args given the module's world, the test's tmp folder and monkeypatch; exit code; what stderr says)
EXIT_CODES: dict[str, tuple[Callable, int, tuple[str, ...]]] = {
    "torchscript-damaged-zip-name": (lambda w, t, m: [_damaged_name(w, t), w / "imgs"], 4, ("damaged.ts: a damaged zip archive",)),
    "torchscript-truncated-zip": (lambda w, t, m: [_truncated_directory(w, t), w / "imgs"], 4, ("truncated.ts: a damaged zip archive", "corrupted")),
    "arch-module-raises-at-import": (
        lambda w, t, m: [w / "w.safetensors", "--arch", _package(t, m, "raise RuntimeError('no GPU here')\n") + ":Net", w / "imgs"],
        4,
        ("failed: RuntimeError: no GPU here",),
    ),
    "arch-module-exits-at-import": (
        lambda w, t, m: [w / "w.safetensors", "--arch", _package(t, m, "import sys\nsys.exit(3)\n") + ":Net", w / "imgs"],
        4,
        ("failed: SystemExit",),
    ),
    "arch-file-raises-at-import": (
        lambda w, t, m: [w / "w.safetensors", "--arch", f"{_file(t, 'nets.py', '1 / 0')}:Net", w / "imgs"],
        4,
        ("nets.py failed: ZeroDivisionError",),
    ),
    "arch-factory-raises-value-error": (
        lambda w, t, m: [w / "w.safetensors", "--arch", f"{_file(t, 'f.py', 'def Net(**kw):' + chr(10) + '    raise ValueError(1)')}:Net", w / "imgs"],
        4,
        ("ValueError: 1",),
    ),
    "composite-not-utf8": (lambda w, t, m: [w / "m.ts", w / "imgs", "-c", _file(t, "c.yaml", b"name: caf\xe9\n")], 3, ("c.yaml:1: composite file is not UTF-8",)),
    "spec-size-negative": (lambda w, t, m: [_spec(w, t, "size: -32"), w / "imgs"], 3, ("input.size must be one or two positive integers",)),
    "spec-std-zero": (lambda w, t, m: [_spec(w, t, "std: 0"), w / "imgs"], 3, ("input.std must be positive",)),
    "zbox-low-above-high": (lambda w, t, m: [w / "m.ts", w / "imgs", "-c", "epsilon_gamma_box", "-p", "low=2", "-p", "high=1"], 3, ("upside down: low 2.0 is above high 1.0",)),
    "zbox-low-above-high-per-channel": (
        lambda w, t, m: [w / "m.ts", w / "imgs", "-c", "epsilon_gamma_box", "-p", "low=[0, 0, 3]", "-p", "high=[1, 1, 1]"],
        3,
        ("upside down",),
    ),
    "images-out-is-a-file": (lambda w, t, m: [w / "m.ts", w / "imgs", "-o", _file(t, "f.txt", "x")], 2, ("f.txt is a file: image results go to a folder",)),
    "csv-out-is-a-folder": (lambda w, t, m: [w / "mlp.ts", w / "rows.csv", "-o", t], 2, ("is a folder: CSV results go to one file", "relevance.csv")),
}


@pytest.mark.parametrize("case", list(EXIT_CODES))
def test_user_errors_exit_with_their_kind(world, tmp_path, monkeypatch, case):
    make, code, fragments = EXIT_CODES[case]
    args = make(world, tmp_path, monkeypatch)
    if "-o" not in args:
        args += ["-o", tmp_path / "out"]
    refused(lrp("explain", *args, "-q"), code, *fragments)


def test_a_csv_header_with_spaces_after_commas_names_its_columns(world, tmp_path):
    (tmp_path / "spaced.csv").write_text("id, a, b, c\nx,1,2,3\ny,4,5,6\n", encoding="utf-8")
    run = lrp("explain", world / "mlp.ts", tmp_path / "spaced.csv", "--id-col", "id", "--features", "a, b,c", "-q")
    assert run.code == 0, run.describe()
    header, *rows = run.stdout.splitlines()
    assert header.split(",")[:1] + header.split(",")[4:] == ["id", "a", "b", "c", "relevance_sum"]
    assert [row.split(",")[0] for row in rows] == ["x", "y"]


def _refuse_writes_under(monkeypatch, folder: Path, code: int) -> None:
    """Every write lrp makes under ``folder`` fails as on a full (ENOSPC) or read-only (EROFS) disk: tests
    run as root here, and root writes through chmod."""
    import pathlib

    import lrpcli.outputs as outputs

    strerror = os.strerror(code)

    def check(path) -> None:
        if str(folder) in os.fsdecode(path):
            raise OSError(code, strerror, os.fsdecode(path))

    real_open, real_mkdir, real_os_open, real_write_atomic = open, pathlib.Path.mkdir, os.open, outputs.write_atomic

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            check(path)
        return real_os_open(path, flags, *args, **kwargs)

    def path_open(self, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            check(self)
        return real_open(self, mode, *args, **kwargs)

    def mkdir(self, *args, **kwargs):
        if not self.is_dir():
            check(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(pathlib.Path, "open", path_open)
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(outputs, "write_atomic", lambda path, data: (check(path), real_write_atomic(path, data)))


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "full"])
def test_an_output_disk_that_refuses_writes_is_named(world, tmp_path, monkeypatch, code):
    """Exit 2 (the place -o names cannot be written: point -o elsewhere or make room), naming the path."""
    (tmp_path / "disk").mkdir()
    _refuse_writes_under(monkeypatch, tmp_path / "disk", code)
    images = lrp("explain", world / "m.ts", world / "imgs", "-q", out=tmp_path / "disk" / "out")
    refused(images, 2, f"cannot write {tmp_path / 'disk' / 'out'}", os.strerror(code))
    rows = lrp("explain", world / "mlp.ts", world / "rows.csv", "-q", "-o", tmp_path / "disk" / "r.csv")
    refused(rows, 2, f"cannot write {tmp_path / 'disk'}", os.strerror(code))


def _shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_closed_or_full_standard_streams_are_named_not_tracebacks(world):
    lrp_ = f"{sys.executable} -m lrpcli.cli"
    cases = {
        f"{lrp_} explain mlp.ts rows.csv -q >&-": (2, "stdout is closed"),
        f"{lrp_} explain mlp.ts - -q <&-": (5, "stdin is closed"),
        f"{lrp_} explain mlp.ts rows.csv -q > /dev/full": (2, "cannot write stdout: No space left on device"),
        f"{lrp_} composites schema > /dev/full": (2, "cannot write stdout: No space left on device"),
        f"{lrp_} explain mlp.ts rows.csv -q -o r.csv >&-": (0, ""),  # stdout is not needed
    }
    for command, (code, fragment) in cases.items():
        done = _shell(command, world)
        assert done.returncode == code and fragment in done.stderr, f"{command}: exit {done.returncode}\n{done.stderr}"
        assert "Traceback" not in done.stderr and "internal error" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


# --------------------------------------------------------------------------- 14: leftovers


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_csv_runs_temporary_file_is_removed_by_the_next_run(world, tmp_path):
    target = tmp_path / "out.csv"
    stale = tmp_path / f".out.csv.{_dead_pid()}.tmp"
    stale.write_text("id,prediction\n" + "1,0\n" * 1000, encoding="utf-8")  # what SIGKILL mid-stream leaves
    alive = tmp_path / f".out.csv.{os.getppid()}.tmp"  # a live process's: maybe another run writing it now
    alive.write_text("", encoding="utf-8")
    run = lrp("explain", world / "mlp.ts", world / "rows.csv", "-q", "-o", target)
    assert run.code == 0, run.describe()
    assert len(read_csv(target)) == 2
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "out.csv", "out.report.html"])  # the page beside the output


def test_a_real_sigkill_leaves_a_temporary_file_that_the_next_run_removes(world, tmp_path):
    """The temporary file is named by its writer's pid: after SIGKILL the pid is gone, and the next run
    writing that file removes it (mkstemp's random names piled up, one per killed run)."""
    rows = tmp_path / "many.csv"
    rows.write_text("a,b,c\n" + "1,2,3\n" * 200_000, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "lrpcli.cli", "explain", str(world / "mlp.ts"), str(rows), "-q", "-o", "out.csv"], cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    import time

    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.csv.*.tmp")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.kill()
    child.wait()
    if not list(tmp_path.glob(".out.csv.*.tmp")):
        pytest.skip("the run finished before it could be killed")
    run = lrp("explain", world / "mlp.ts", world / "rows.csv", "-q", "-o", tmp_path / "out.csv")
    assert run.code == 0, run.describe()
    assert not list(tmp_path.glob(".out.csv.*.tmp"))


def test_csv_outputs_get_the_usual_file_mode(world, tmp_path):
    previous = os.umask(0o022)
    try:
        run = lrp("explain", world / "mlp.ts", world / "rows.csv", "-q", "-o", tmp_path / "out.csv")
    finally:
        os.umask(previous)
    assert run.code == 0, run.describe()
    assert stat.S_IMODE((tmp_path / "out.csv").stat().st_mode) == 0o644  # mkstemp made it 0600


def test_a_model_error_leaves_no_manifest_and_no_partial_summary(world, tmp_path):
    run = lrp("explain", world / "gray.ts", world / "imgs", "-q", out=tmp_path / "out")  # 1-channel model, RGB image
    refused(run, 4, "the model failed on every input")
    assert not (tmp_path / "out").exists(), sorted(p.name for p in (tmp_path / "out").iterdir())
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine", encoding="utf-8")  # a folder that held something keeps it
    refused(lrp("explain", world / "gray.ts", world / "imgs", "-q", out=tmp_path / "kept"), 4)
    assert sorted(p.name for p in (tmp_path / "kept").iterdir() if not p.name.startswith(".lock")) == ["notes.txt"]


@pytest.mark.parametrize("planted", ["heatmaps", "relevance", "summary.partial.csv", "heatmaps/sub"])
def test_a_symlink_planted_inside_out_does_not_send_writes_outside(world, tmp_path, planted):
    write_image(tmp_path / "imgs" / "a.png", 0)
    write_image(tmp_path / "imgs" / "sub" / "b.png", 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    (out / planted).parent.mkdir(parents=True, exist_ok=True)
    target = elsewhere if "." not in planted else elsewhere / "victim.csv"
    if target.suffix:
        target.write_text("precious\n", encoding="utf-8")
    (out / planted).symlink_to(target)
    run = lrp("explain", world / "m.ts", tmp_path / "imgs", "-q", out=out)
    refused(run, 2, "leads out of the output folder")
    if target.suffix:
        assert target.read_text(encoding="utf-8") == "precious\n"
    else:
        assert not any(p.is_file() for p in elsewhere.rglob("*")), list(elsewhere.rglob("*"))


def test_a_symlink_inside_out_that_stays_inside_is_fine(world, tmp_path):
    out = tmp_path / "out"
    (out / "real").mkdir(parents=True)
    (out / "heatmaps").symlink_to(out / "real")
    run = lrp("explain", world / "m.ts", world / "imgs", "-q", out=out)
    assert run.code == 0, run.describe()
    assert (out / "real" / "a.png").is_file()


def test_float64_relevance_is_saved_as_float64(world, tmp_path):
    run = lrp("explain", world / "m.ts", world / "imgs", "--dtype", "float64", "-q", out=tmp_path / "out")
    assert run.code == 0, run.describe()
    relevance = run.array("relevance/a.npy")
    assert relevance.dtype == np.float64
    assert float(relevance.sum()) == float(run.rows()[0]["relevance_sum"]) or np.isclose(relevance.sum(), float(run.rows()[0]["relevance_sum"]), rtol=1e-12)
    assert lrp("explain", world / "m.ts", world / "imgs", "-q", out=tmp_path / "f32").array("relevance/a.npy").dtype == np.float32


# --------------------------------------------------------------------------- fuzz: the config and CSV parsers

from datetime import timedelta  # noqa: E402

import click  # noqa: E402
import yaml  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lrpcli.errors import LrpError  # noqa: E402

WORDS = ["name", "rules", "params", "extends", "canonizers", "match", "rule", "type", "first", "epsilon", "gamma", "low",
         "high", "stabilizer", "zbox", "zplus", "flat", "conv", "linear", "model", "arch", "arch_kwargs", "input", "classes",
         "composite", "size", "resize", "crop", "mean", "std", "mode", "features", "drop", "id_col", "label_col", "RGB", "L",
         "epsilon_plus", "lrp_0", "m.ts", "x"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS), st.text(max_size=8),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=4), inner, max_size=4), max_leaves=12)
MAPPINGS = st.dictionaries(st.sampled_from(WORDS), VALUES, max_size=6)
YAML_TEXT = st.lists(st.sampled_from(list("abz:-[]{},&*!|>#'\"\n \t.0123456789e+\xe9") + WORDS + ["\n  - ", ": ", "*a", "&a "]), max_size=60).map("".join)
NUMBER = st.floats(-1e3, 1e3).map(lambda v: f"{v:.4g}")
CELLS = NUMBER | NUMBER | NUMBER | st.sampled_from(["1", "2.5", "-3", "1e3", "", " ", "nan", "inf", "x", "caf\xe9", "5\udcb5", '"1,2"', '"'])
CSV_ROWS = st.tuples(
    st.permutations(["a", "b", "c"]).map(list) | st.permutations(["a", "b", "c", "id"]).map(list)
    | st.lists(st.sampled_from(["a", "b", "c", "d", " a", "b ", "id", ""]), min_size=1, max_size=5),
    st.lists(st.lists(CELLS, min_size=3, max_size=3) | st.lists(CELLS, min_size=4, max_size=4) | st.lists(CELLS, max_size=5), max_size=6),
    st.sampled_from([",", ", "]),
    st.sampled_from(["\n", "\r\n"]),
).map(lambda p: p[3].join([p[2].join(p[0])] + [",".join(row) for row in p[1]]) + p[3])
CSV_NUMERIC = st.lists(
    st.lists(NUMBER | st.floats(allow_nan=True, allow_infinity=True).map(repr) | CELLS, min_size=3, max_size=3).map(",".join), min_size=1, max_size=8
).map(lambda rows: "a, b,c\n" + "\n".join(rows) + "\n")
CSV_RAW = st.lists(st.sampled_from(list("abcd,\"\n\r  0123456789.-+eE_\xe9\udcff") + ["nan", "inf", "a,b,c\n", "1,2,3\n", " a", "\n"]), max_size=80).map("".join)
CSV_TEXT = CSV_ROWS | CSV_RAW


def only_user_errors(call: Callable[[], object]) -> None:
    """``call`` returns, or raises a user error: an LrpError of a kind other than internal, or click's."""
    try:
        call()
    except LrpError as exc:
        assert exc.exit_code != 1, f"internal LrpError: {exc!r}"
    except click.ClickException:
        pass


def _fuzz(strategy, check: Callable, examples: int) -> None:
    @settings(max_examples=examples, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None)
    @given(strategy)
    def run(value) -> None:
        check(value)

    run()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    save_torchscript(minivgg(), folder / "m.ts")
    return folder


def _composite_check(folder: Path):
    from lrpcli.engine.composite_yaml import load_composite

    def load(text: str) -> None:
        path = folder / "c.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        composite = load_composite(path)
        for entry in composite.entries:
            composite.make_rule(entry)

    def check(value) -> None:
        text = value if isinstance(value, str) else yaml.safe_dump(value, allow_unicode=True)
        only_user_errors(lambda: load(text))

    return check


def _spec_check(folder: Path):
    from lrpcli.sources.files import load_spec

    def check(value) -> None:
        if isinstance(value, dict):
            value = {"model": "m.ts", **value}
        text = value if isinstance(value, str) else yaml.safe_dump(value, allow_unicode=True)
        (folder / "spec.yaml").write_text(text, encoding="utf-8", errors="surrogateescape")
        only_user_errors(lambda: load_spec(folder / "spec.yaml"))

    return check


def _params_check(values: list[str]) -> None:
    from lrpcli.cli.options import parse_params
    from lrpcli.engine.composite_yaml import load_composite

    only_user_errors(lambda: load_composite("epsilon_gamma_box", **parse_params(tuple(values))))


CSV_OPTIONS = st.fixed_dictionaries(
    {
        "features": st.none() | st.permutations(["a", "b", "c"]).map(list) | st.lists(st.sampled_from(["a", "b", "c", "d", " a", ""]), max_size=4),
        "drop": st.just([]) | st.lists(st.sampled_from(["a", "d", "x"]), max_size=2),
        "id_col": st.none() | st.just("id") | st.sampled_from(["a", "d", "id"]),
        "mean": st.none() | st.lists(st.floats(-5, 5), min_size=3, max_size=3),
        "std": st.none() | st.lists(st.floats(-1, 5), min_size=3, max_size=3),
        "batch_size": st.integers(1, 4),
        "top_k": st.none() | st.integers(1, 3),
        "on_error": st.sampled_from(["skip", "fail"]),
    }
)


@pytest.fixture(scope="module")
def mlp_explainer():
    from lrpcli import load_composite
    from lrpcli.engine.explainer import Explainer

    torch.manual_seed(0)
    return Explainer(MLP(3, (4,), 2).eval(), load_composite("epsilon"))


def _csv_check(explainer):
    import io

    from lrpcli.runs.rows import explain_rows

    def check(case) -> None:
        text, options = case
        only_user_errors(lambda: explain_rows(explainer, io.StringIO(text, newline=""), "<fuzz>", io.StringIO(), device="cpu", **options))

    return check


FUZZ = {
    "composite-mappings": (lambda s, e: (st.fixed_dictionaries({"rules": st.lists(MAPPINGS, max_size=3)}, optional={"params": MAPPINGS, "extends": VALUES}) | MAPPINGS, _composite_check(s))),
    "composite-text": (lambda s, e: (YAML_TEXT, _composite_check(s))),
    "spec-mappings": (lambda s, e: (st.fixed_dictionaries({}, optional={"input": MAPPINGS, "classes": VALUES, "arch_kwargs": VALUES, "composite": VALUES}) | MAPPINGS, _spec_check(s))),
    "spec-text": (lambda s, e: (YAML_TEXT, _spec_check(s))),
    "params": (lambda s, e: (st.lists(st.tuples(st.sampled_from(["low", "high", "epsilon", "gamma", "stabilizer", "x", ""]), YAML_TEXT).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=3), _params_check)),
    "csv": (lambda s, e: (st.tuples(CSV_TEXT, CSV_OPTIONS), _csv_check(e))),
    # the right columns and mostly numbers, so rows reach the model (NaN, inf, huge values, odd cells among them)
    "csv-rows": (lambda s, e: (st.tuples(CSV_NUMERIC, CSV_OPTIONS.map(lambda o: {**o, "features": None, "drop": [], "id_col": None})), _csv_check(e))),
}


@pytest.mark.parametrize("parser", list(FUZZ))
def test_fuzzed_configs_and_csv_rows_give_user_errors_only(parser, scratch, mlp_explainer):
    """A few seconds in the default suite; the slow variant below runs ~50 times as many examples."""
    strategy, check = FUZZ[parser](scratch, mlp_explainer)
    _fuzz(strategy, check, examples=60)


@pytest.mark.slow
@pytest.mark.parametrize("parser", list(FUZZ))
def test_fuzzed_configs_and_csv_rows_give_user_errors_only_long(parser, scratch, mlp_explainer):
    strategy, check = FUZZ[parser](scratch, mlp_explainer)
    _fuzz(strategy, check, examples=3000)
