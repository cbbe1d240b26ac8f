"""Careless and hostile inputs that used to kill a run or lose work (issue 18, items 3-8).

Each test builds the bad input the issue describes, runs ``lrp`` in-process and checks what a user
must see: the run goes on past the bad input and names it (exit 5), or a bad config is refused at
once and named (exit 3), or a conflicting run is refused (exit 2); and nothing else is lost.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_support import lrp, minivgg, read_csv, refused, save_torchscript, tiny_gray, write_image
from lrpcli.sources.architectures import MLP

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    save_torchscript(minivgg(), root / "m.ts")
    for name, seed in (("a.png", 0), ("b.png", 1)):
        write_image(root / "imgs" / name, seed)
    return root


# --------------------------------------------------------------------------- 3: NaN and inf


def test_non_finite_logits_fail_that_input_alone(tmp_path):
    """Weights that overflow float32 on a bright image (a black one stays at 0): the bright image fails,
    named, instead of a blank heatmap and a NaN summary row with exit 0."""
    model = tiny_gray()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1e20)
    save_torchscript(model, tmp_path / "huge.ts")
    Image.new("L", (8, 8), 0).save(tmp_path / "black.png")
    Image.new("L", (8, 8), 255).save(tmp_path / "white.png")
    run = lrp("explain", tmp_path / "huge.ts", tmp_path / "black.png", tmp_path / "white.png", "--mode", "L", "-q", out=tmp_path / "out")
    refused(run, 5, "white.png", "NaN or infinite", "1 of 2 input(s) failed")
    assert "black.png" not in run.stderr
    assert [row["input"] for row in run.rows()] == ["black.png"]
    assert run.files() >= {"heatmaps/black.png", "relevance/black.npy"} and "heatmaps/white.png" not in run.files()
    assert np.isfinite(run.array("relevance/black.npy")).all()


def test_non_finite_csv_rows_are_named_and_the_others_written(tmp_path):
    torch.manual_seed(0)
    model = MLP(3, (4,), 2, bias=False).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1e25)
    save_torchscript(model, tmp_path / "mlp.ts")
    (tmp_path / "rows.csv").write_text("a,b,c\n0,0,0\n1,2,3\n0,0,0\n", encoding="utf-8")
    run = lrp("explain", tmp_path / "mlp.ts", tmp_path / "rows.csv", "-q")
    refused(run, 5, "rows.csv: row 3", "NaN or infinite")
    assert [line.split(",")[0] for line in run.stdout.splitlines()[1:]] == ["1", "3"]
    assert "nan" not in run.stdout.lower() and "inf" not in run.stdout.lower()


NON_FINITE_CONFIGS = {
    "rule value": ("composite", "rules:\n  - match: {type: conv}\n    rule: epsilon\n    epsilon: .nan\n", ["c.yaml:4", "epsilon", "finite"]),
    "composite param": ("composite", "params: {stabilizer: .inf}\nrules:\n  - {match: {type: linear}, rule: epsilon}\n", ["c.yaml:1", "stabilizer", "finite"]),
    "zbox bound": ("composite", "rules:\n  - {match: {first: true}, rule: zbox, low: [0, .nan, 0]}\n", ["c.yaml:2", "low", "finite"]),
    "-p value": ("param", "epsilon=.nan", ["epsilon", "finite"]),
    "spec mean": ("spec", "  mean: [.nan, 0.5, 0.5]\n", ["spec.yaml", "input.mean", "finite"]),
    "spec std": ("spec", "  std: [.inf]\n", ["spec.yaml", "input.std", "finite"]),
}


@pytest.mark.parametrize("case", list(NON_FINITE_CONFIGS))
def test_non_finite_parameters_are_config_errors(world, tmp_path, case):
    kind, value, fragments = NON_FINITE_CONFIGS[case]
    model, extra = world / "m.ts", []
    if kind == "composite":
        (tmp_path / "c.yaml").write_text(value, encoding="utf-8")
        extra = ["-c", tmp_path / "c.yaml"]
    elif kind == "param":
        extra = ["-p", value]
    else:
        model = tmp_path / "spec.yaml"
        model.write_text(f"model: {world / 'm.ts'}\ninput:\n  size: [32, 32]\n{value}", encoding="utf-8")
    refused(lrp("explain", model, world / "imgs", *extra, "-q", out=tmp_path / "out"), 3, *fragments)
    assert not (tmp_path / "out").exists()


def test_exponent_floats_without_a_dot_are_numbers(world, tmp_path):
    """Item 13: YAML 1.1 reads 1e-6 as a string; in -p values and composite files it means the number."""
    (tmp_path / "c.yaml").write_text("extends: epsilon\nparams: {epsilon: 1e-3}\n", encoding="utf-8")
    for extra in (["-p", "epsilon=1e-3"], ["-c", tmp_path / "c.yaml"]):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        run = lrp("explain", world / "m.ts", world / "imgs", "-c", "epsilon", *extra, "-q", out=out)
        assert run.code == 0, run.describe()
        assert run.run_json()["composite"]["params"]["epsilon"] == 1e-3


# --------------------------------------------------------------------------- 4: decompression bombs


def bilevel_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG: 20000x20000 pixels compress to ~50 KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("workers", ["0", "1"])
def test_decompression_bombs_fail_alone_named(world, tmp_path, workers):
    """Past twice Pillow's MAX_IMAGE_PIXELS Pillow raises (that killed the run, exit 1); between once and
    twice it only warns and would decode 100 million pixels (300 MB as RGB): both fail, named, exit 5."""
    folder = tmp_path / "imgs"
    write_image(folder / "good.png", 0)
    bilevel_png(folder / "bomb.png", 20000, 20000)
    bilevel_png(folder / "big.png", 10000, 10000)
    assert (folder / "bomb.png").stat().st_size < 100_000
    run = lrp("explain", world / "m.ts", folder, "--workers", workers, "-q", out=tmp_path / "out")
    refused(run, 5, "bomb.png: refused as a possible decompression bomb", "big.png: refused as a possible decompression bomb", "2 of 3")
    assert [row["input"] for row in run.rows()] == ["good.png"]
    failures = {f["input"] for f in run.run_json()["failures"]}
    assert failures == {"bomb.png", "big.png"}


# --------------------------------------------------------------------------- 5: names that are not UTF-8


def test_a_file_name_that_is_not_utf8_is_explained_under_an_escaped_name(world, tmp_path):
    folder = tmp_path / "imgs"
    write_image(folder / "good.png", 0)
    raw = os.fsdecode(b"bad\xff.png")  # how Python sees the byte 0xff in a Linux file name
    (folder / raw).write_bytes((folder / "good.png").read_bytes())
    out = tmp_path / "out"
    run = lrp("explain", world / "m.ts", folder, "-q", out=out)
    assert run.code == 0, run.describe()
    rows = run.rows()
    assert [row["input"] for row in rows] == ["bad\\xff.png", "good.png"]
    assert (out / rows[0]["heatmap"]).is_file() and rows[0]["heatmap"] == "heatmaps/bad\\xff.png"
    np.testing.assert_array_equal(run.array(rows[0]["relevance"]), run.array(rows[1]["relevance"]))
    (out / "summary.csv").read_text(encoding="utf-8")  # valid UTF-8
    listing = tmp_path / "list.txt"  # the same name from --inputs-from (as `find` writes it)
    listing.write_bytes(os.fsencode(folder / raw) + b"\n")
    again = lrp("explain", world / "m.ts", "--inputs-from", listing, "-q", out=tmp_path / "listed")
    assert again.code == 0, again.describe()
    assert [row["input"] for row in again.rows()] == ["bad\\xff.png"]
    resumed = lrp("explain", world / "m.ts", folder, "-q", "--resume", out=out)
    assert resumed.code == 0 and len(resumed.rows()) == 2, resumed.describe()


# --------------------------------------------------------------------------- 6: --resume with other options


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "out"
    run = lrp("explain", world / "m.ts", world / "imgs", "-q", out=out)
    assert run.code == 0, run.describe()
    return out


RESUMED_WITH = {
    "--target": ["--target", "1"],
    "--top-k": ["--top-k", "2"],
    "--init": ["--init", "one-hot"],
    "--size": ["--size", "32,32"],
    "--crop": ["--resize", "40", "--crop", "32"],
    "--mean": ["--mean", "0.5"],
    "--cmap": ["--cmap", "gray"],
    "--overlay": ["--overlay"],
    "--no-arrays": ["--no-arrays"],
    "--dtype": ["--dtype", "float64"],
    "--classes": ["--classes", REPO / "sample_models" / "shapes_minivgg" / "classes.txt"],
}


@pytest.mark.parametrize("option", list(RESUMED_WITH))
def test_resume_with_another_result_option_is_refused_naming_it(world, finished, option):
    before = (finished / "manifest.jsonl").read_bytes()
    run = lrp("explain", world / "m.ts", world / "imgs", "-q", "--resume", *RESUMED_WITH[option], out=finished)
    refused(run, 2, "--resume", str(finished), option, "other options")
    assert (finished / "manifest.jsonl").read_bytes() == before  # nothing mixed in, nothing truncated


def test_resume_with_a_mode_the_model_cannot_take_names_the_mode(world, finished):
    """(--mode L on this RGB model is refused before --resume is looked at: the model's first layer reads 3 channels.)"""
    before = (finished / "manifest.jsonl").read_bytes()
    run = lrp("explain", world / "m.ts", world / "imgs", "-q", "--resume", "--mode", "L", out=finished)
    refused(run, 2, "3 channel", "--mode rgb")
    assert (finished / "manifest.jsonl").read_bytes() == before


def test_resume_with_the_same_options_goes_on_and_run_json_lists_the_runs(world, finished):
    run = lrp("explain", world / "m.ts", world / "imgs", "-q", "--resume", "--cmap", "BWR", out=finished)
    assert run.code == 0, run.describe()
    runs = run.run_json()["runs"]
    assert len(runs) >= 2 and runs[0]["resume"] is False and runs[-1]["resume"] is True
    header = json.loads((finished / "manifest.jsonl").read_text().splitlines()[0])
    assert header["settings"]["--cmap"] == "bwr" and header["settings"]["--target"] == "pred"
    fresh = lrp("explain", world / "m.ts", world / "imgs", "-q", "--target", "1", out=finished)  # no --resume: starts over
    assert fresh.code == 0 and {row["target"] for row in fresh.rows()} == {"1"}, fresh.describe()


# --------------------------------------------------------------------------- 7: two runs into one folder


HOLD = """
import sys
from pathlib import Path
from lrpcli.runs.shards import Shard, output_lock
with output_lock(Path(sys.argv[1]), Shard.parse(sys.argv[2] or None)):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_other_pid(world, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), ""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        run = lrp("explain", world / "m.ts", world / "imgs", "-q", out=out)
        refused(run, 2, str(out), f"pid {holder.pid}", "in use")
        assert not (out / "manifest.jsonl").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    after = lrp("explain", world / "m.ts", world / "imgs", "-q", out=out)  # the lock went with the process
    assert after.code == 0, after.describe()


def test_shards_of_one_job_share_a_folder_but_not_a_shard(world, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "1/2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        same = lrp("explain", world / "m.ts", world / "imgs", "-q", "--shard", "1/2", out=out)
        refused(same, 2, f"pid {holder.pid}", "shard 1/2")
        other = lrp("explain", world / "m.ts", world / "imgs", "-q", "--shard", "2/2", out=out)
        assert other.code == 0, other.describe()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


# --------------------------------------------------------------------------- 8: bounded configs


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Nine levels of nine aliases (~700 bytes): 9**9 values once expanded."""
    items = [f"&l0 [{', '.join(['lol'] * width)}]"]
    items += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def test_a_yaml_alias_bomb_in_a_composite_is_refused_at_once(world, tmp_path):
    bomb = alias_bomb()
    assert len(bomb) < 800
    (tmp_path / "c.yaml").write_text(f"rules:\n  - match: {{type: conv}}\n    rule: gamma\n    gamma: {bomb}\n", encoding="utf-8")
    started = time.perf_counter()
    run = lrp("explain", world / "m.ts", world / "imgs", "-c", tmp_path / "c.yaml", "-q", out=tmp_path / "out")
    refused(run, 3, "c.yaml:4", "expands to more than")
    assert time.perf_counter() - started < 5 and len(run.stderr) < 1000


@pytest.mark.parametrize(
    "text, fragment",
    [
        (lambda m: f"model: {m}\narch_kwargs: {{a: {alias_bomb()}}}\n", "expands to more than"),
        (lambda m: f"model: {m}\nclasses: &c [x]\narch_kwargs: {{{', '.join(f'k{i}: *c' for i in range(150))}}}\n", "more than 100 YAML aliases"),
        (lambda m: f"model: {m}\narch_kwargs: &a {{self: *a}}\n", "refers to the collection that contains it"),
        (lambda m: f"model: {m}\ninput: {{size: 100000}}\n", "input.size 100000x100000"),
        (lambda m: f"model: {m}\ninput: {{size: [32, 32], crop: [20000, 20000]}}\n", "input.crop"),
        (lambda m: f"model: {m}\nclasses: /dev/zero\n", "not a regular file"),
        (lambda m: f"model: {m}\nclasses: big.txt\n", "more than the limit"),
        (lambda m: f"model: {m}\ndescription: {'[' * 5000}\n", "nested too deeply"),
    ],
    ids=["alias bomb", "alias count", "recursive alias", "size", "crop", "/dev/zero", "huge classes file", "deep nesting"],
)
def test_a_spec_that_asks_too_much_is_refused_at_once(world, tmp_path, text, fragment):
    with open(tmp_path / "big.txt", "wb") as handle:
        handle.truncate(9 << 20)  # sparse: 9 MiB of class names in no time
    spec = tmp_path / "spec.yaml"
    spec.write_text(text(world / "m.ts"), encoding="utf-8")
    started = time.perf_counter()
    run = lrp("explain", spec, world / "imgs", "-q", out=tmp_path / "out")
    refused(run, 3, "spec.yaml", fragment)
    assert time.perf_counter() - started < 5 and len(run.stderr) < 1000


def test_command_line_sizes_and_class_files_are_bounded_too(world, tmp_path):
    refused(lrp("explain", world / "m.ts", world / "imgs", "--size", "100000", "-q", out=tmp_path / "a"), 2, "--size 100000x100000")
    refused(lrp("explain", world / "m.ts", world / "imgs", "--classes", "/dev/zero", "-q", out=tmp_path / "b"), 3, "/dev/zero", "not a regular file")
    refused(lrp("explain", world / "m.ts", world / "imgs", "-p", f"low={alias_bomb()}", "-q", out=tmp_path / "c"), 3, "expands to more than")


# --------------------------------------------------------------------------- 9: CSV bytes that are not UTF-8


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mlp") / "mlp.ts"
    return save_torchscript(MLP(3, (4,), 2).eval(), path)


LATIN1 = b"a,b,c,name\n1,2,3,x\n4,5\xb5,6,y\n7,8,9,caf\xe9\n10,11,12,z\n"


def test_a_latin1_byte_in_a_csv_fails_its_row_named_and_keeps_the_others(mlp, tmp_path):
    source = tmp_path / "rows.csv"
    source.write_bytes(LATIN1)
    written = tmp_path / "out.csv"
    run = lrp("explain", mlp, source, "--id-col", "name", "-o", written, "-q")
    refused(run, 5, "rows.csv: row 3, column 'b': '5\\xb5' is not UTF-8", "rows.csv: row 4, column 'name': 'caf\\xe9' is not UTF-8", "2 of 4 row(s) failed")
    assert [row["id"] for row in read_csv(written)] == ["x", "z"]  # the rows before and after the bad ones


def test_a_latin1_byte_in_an_unused_csv_column_harms_nothing(mlp, tmp_path):
    from click.testing import CliRunner

    from lrpcli.cli import main

    run = CliRunner().invoke(main, ["explain", str(mlp), "-", "--features", "a,c,b", "--drop", "name", "-q"], input=LATIN1.replace(b"5\xb5", b"5"))
    assert run.exit_code == 0, run.stderr
    assert len(run.stdout.splitlines()) == 5


# --------------------------------------------------------------------------- 10: class names that sanitise alike


def test_class_names_that_sanitise_alike_get_their_own_files(world, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat/dog\ncat_dog\nCat?dog\ncrane\n", encoding="utf-8")
    run = lrp("explain", world / "m.ts", world / "imgs" / "a.png", "--classes", classes, "--target", "all", "-q", out=tmp_path / "out")
    assert run.code == 0, run.describe()
    rows = run.rows()
    assert [row["heatmap"] for row in rows] == [f"heatmaps/a.{label}.png" for label in ("cat_dog-0", "cat_dog-1", "Cat_dog-2", "crane")]
    assert [row["target_label"] for row in rows] == ["cat/dog", "cat_dog", "Cat?dog", "crane"]
    for row in rows:  # each row's files hold its own target's relevance, not another's written over it
        assert float(run.array(row["relevance"]).sum()) == pytest.approx(float(row["relevance_sum"]), rel=1e-5, abs=1e-6)


def test_file_labels_are_unique_and_keep_unique_names():
    from lrpcli.outputs import file_labels

    assert file_labels(["tench", "crane", "goldfish", "crane"]) == ["tench", "crane-1", "goldfish", "crane-3"]
    labels = file_labels(["a b", "a_b", "a_b-1", "A?b"])
    assert len({label.lower() for label in labels}) == 4


# --------------------------------------------------------------------------- 11: OUT inside an input folder


@pytest.mark.parametrize("inside", ["imgs/lrp-out", "imgs"])
def test_an_output_folder_inside_the_inputs_is_not_collected_by_later_runs(world, tmp_path, inside):
    for name, seed in (("a.png", 0), ("sub/b.png", 1)):
        write_image(tmp_path / "imgs" / name, seed)
    out = tmp_path / inside
    for _ in range(2):
        run = lrp("explain", world / "m.ts", tmp_path / "imgs", "-q", out=out)
        assert run.code == 0, run.describe()
        assert [row["input"] for row in run.rows()] == ["a.png", "sub/b.png"]
