"""Bounds on what a hostile file can make a run do (issue 24, item 3).

Each test builds the hostile input the issue describes and checks what a user must see: a zip bomb
of a model refused before it is unpacked (exit 4, naming the sizes and the override); an endless
``--inputs-from`` refused at its first line (exit 5); a text the tokenizer panics on, a JSON line
nested too deeply, a CSV cell past the csv field limit failing that text alone, named, the others
explained (exit 5); a tokenizer that does not fit the model refused naming both vocabulary sizes
(exit 4) instead of ``internal error: IndexError``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from cli_support import lrp, refused, save_torchscript, tiny_gray, write_image

tokenizers = pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20


#: Forks lrp from a small process and reports the grandchild's peak memory: a child forked straight from
#: pytest inherits pytest's resident-memory high-water mark (Linux keeps ru_maxrss across fork and exec),
#: which passes 512 MiB late in a full run whatever lrp itself does.
_LAUNCHER = """
import os, resource, sys
limit, args = int(sys.argv[1]), sys.argv[2:]
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.execv(sys.executable, [sys.executable, "-m", "lrpcli.cli", *args])
_, status, usage = os.wait4(pid, 0)
os.write(1, str(usage.ru_maxrss * 1024).encode())
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def lrp_process(*args, limit: int = 3 << 30, timeout: float = 120) -> tuple[int, str, int]:
    """``python -m lrpcli.cli ARGS`` in a child with at most ``limit`` bytes of data (RLIMIT_DATA: heap and
    anonymous mappings; unlike RLIMIT_AS it leaves out the shared libraries of a CUDA build of torch): its
    exit code, its stderr and its own peak resident memory in bytes (os.wait4 in a small launcher). A run
    that reads without bound fails there with a MemoryError, or is killed at ``timeout``, instead of taking
    the test machine's memory."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(limit), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env, start_new_session=True,
    )
    try:
        out, err = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, 9)  # the launcher and lrp under it
        launcher.communicate()
        pytest.fail(f"lrp {' '.join(map(str, args))} still ran after {timeout} s")
    code = launcher.returncode if launcher.returncode < 128 else launcher.returncode - 256
    return code, err.decode("utf-8", "replace"), int(out or 0)


# --------------------------------------------------------------------------- 1: zip bombs of models


def inflate(archive: Path, out: Path, suffix: str, extra: int) -> Path:
    """``archive`` rewritten with the entry ending in ``suffix`` deflated and followed by ``extra`` zero
    bytes: a few hundred kB on disk that declare (and really unpack to) ``extra`` bytes more."""
    # zeros deflate ~1000:1 at any level, fastest at level 1
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as target:
        for info in source.infolist():
            data = source.read(info)
            if not info.filename.endswith(suffix):
                target.writestr(info, data)
                continue
            with target.open(info.filename, "w", force_zip64=True) as handle:
                handle.write(data)
                zeros = bytes(4 * MiB)
                for _ in range(extra // len(zeros)):
                    handle.write(zeros)
    return out


def largest_entry(archive: Path, prefix: str = "") -> str:
    with zipfile.ZipFile(archive) as source:
        return max((i for i in source.infolist() if prefix in i.filename), key=lambda i: i.file_size).filename


def test_a_torchscript_zip_bomb_is_refused_before_it_is_unpacked(tmp_path):
    """A TorchScript of ~2 MB whose weight entry unpacks to 512 MiB: refused at once, naming the file, both
    sizes, the bound and the override, while the child stays far below what loading it would take."""
    model = save_torchscript(tiny_gray(), tmp_path / "tiny.ts")
    bomb = inflate(model, tmp_path / "bomb.ts", largest_entry(model, "/data/"), 512 * MiB)
    assert bomb.stat().st_size < 4 * MiB  # (level 1 packs zeros ~230:1)
    write_image(tmp_path / "x.png", 0, (8, 8), "L")
    code, stderr, peak = lrp_process("explain", bomb, tmp_path / "x.png", "--mode", "L", "-q", "-o", tmp_path / "out")
    assert code == 4, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    for fragment in (str(bomb), f"{bomb.stat().st_size:,} bytes on disk", "unpack to 536,", "more than the limit of 67,108,864 bytes", "LRP_MAX_UNPACKED="):
        assert fragment in stderr, f"{fragment!r} not in {stderr}"
    assert 0 < peak < 512 * MiB, f"peak RSS {peak / MiB:.0f} MiB"  # loading it took ~1.3 GB
    assert not (tmp_path / "out" / "summary.csv").exists()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from cli_support import save_exported

    return save_exported(tiny_gray(), tmp_path_factory.mktemp("pt2") / "tiny.pt2", torch.rand(2, 1, 8, 8))


def test_a_pt2_zip_bomb_is_refused_without_reaching_torch_export_load(exported, tmp_path, monkeypatch):
    bomb = inflate(exported, tmp_path / "bomb.pt2", largest_entry(exported, "/data/weights/"), 80 * MiB)

    def never(*_, **__):
        raise AssertionError("torch.export.load was called on a zip bomb")

    monkeypatch.setattr(torch.export, "load", never)
    write_image(tmp_path / "x.png", 0, (8, 8), "L")
    run = lrp("explain", bomb, tmp_path / "x.png", "--mode", "L", "-q", out=tmp_path / "out")
    refused(run, 4, str(bomb), "unpack to 8", "more than the limit of 67,108,864 bytes (10 times the file's size or 64 MiB", "LRP_MAX_UNPACKED=")


def test_the_archive_bound_can_be_set_and_a_bad_setting_is_named(exported, tmp_path, monkeypatch):
    write_image(tmp_path / "x.png", 0, (8, 8), "L")
    assert lrp("explain", exported, tmp_path / "x.png", "--mode", "L", "-q", out=tmp_path / "ok").code == 0
    monkeypatch.setenv("LRP_MAX_UNPACKED", "1K")
    refused(lrp("explain", exported, tmp_path / "x.png", "--mode", "L", "-q", out=tmp_path / "small"), 4, "more than the limit of 1,024 bytes (LRP_MAX_UNPACKED=1K)")
    monkeypatch.setenv("LRP_MAX_UNPACKED", "lots")
    refused(lrp("explain", exported, tmp_path / "x.png", "--mode", "L", "-q", out=tmp_path / "bad"), 3, "LRP_MAX_UNPACKED='lots' is not a size")


# --------------------------------------------------------------------------- 2: --inputs-from without end


@pytest.mark.parametrize("command", ["explain", "check-conservation"])
def test_inputs_from_dev_zero_stops_at_its_first_line(tmp_path, command):
    """/dev/zero is one endless line: refused at once (it grew by a gigabyte a second), in a child whose
    memory is bounded so that a run reading it all fails there, not on the test machine."""
    model = save_torchscript(tiny_gray(), tmp_path / "tiny.ts")
    out = ["-o", tmp_path / "out"] if command == "explain" else []
    code, stderr, _ = lrp_process(command, model, "--inputs-from", "/dev/zero", "--mode", "L", *out, timeout=60)
    assert code == 5, stderr
    assert "--inputs-from /dev/zero: line 1 is longer than 4,096 bytes" in stderr, stderr
    assert "Traceback" not in stderr


def test_an_inputs_list_with_a_line_too_long_for_a_path_names_the_line(tmp_path):
    model = save_torchscript(tiny_gray(), tmp_path / "tiny.ts")
    write_image(tmp_path / "x.png", 0, (8, 8), "L")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{tmp_path / 'x.png'}\n# a comment\n{'y' * 5000}.png\n{tmp_path / 'x.png'}\n")
    run = lrp("explain", model, "--inputs-from", listed, "--mode", "L", "-q", out=tmp_path / "out")
    refused(run, 5, f"--inputs-from {listed}: line 3 is longer than 4,096 bytes")
    listed.write_bytes(f"{tmp_path / 'x.png'}\nbad\0name.png\n".encode())
    refused(lrp("explain", model, "--inputs-from", listed, "--mode", "L", "-q", out=tmp_path / "out"), 5, f"--inputs-from {listed}: line 2 holds a NUL byte")
    listed.write_text(f"{tmp_path / 'x.png'}\n{'z' * 4096}\n")  # a line of exactly the bound is read: a (missing) path
    run = lrp("explain", model, "--inputs-from", listed, "--mode", "L", "-q", out=tmp_path / "out2")
    refused(run, 5, "input not found: zzzz", "File name too long")  # (was an internal OSError from pathlib)


def test_inputs_from_stops_at_the_bound_on_inputs(tmp_path, monkeypatch):
    from lrpcli import limits
    from lrpcli.errors import InputError
    from lrpcli.runs.shards import read_inputs_list

    monkeypatch.setattr(limits, "MAX_LISTED_INPUTS", 3)
    listed = tmp_path / "list.txt"
    listed.write_text("a\nb\n\n# c\nd\ne\nf\n")
    with pytest.raises(InputError, match=r"more than 3 inputs \(at line 6\)"):
        read_inputs_list(str(listed))
    listed.write_text("a\r\nb\r\n  c  \n")
    assert read_inputs_list(str(listed)) == ["a", "b", "c"]


# --------------------------------------------------------------------------- 3-5: texts

VOCAB = ["[PAD]", "[UNK]", "the", "film", "was", "good", "bad", "a", "!", "plot"]


class Bag(nn.Module):
    """Sum of the token embeddings, a bias-free linear head."""

    def __init__(self, rows: int = len(VOCAB)):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(rows, 4)
        self.head = nn.Linear(4, 2, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids).sum(1))


def word_tokenizer(path: Path, vocab: list[str] = VOCAB, pad_id: int = 0, pattern: str | None = None) -> Path:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated") if pattern else pre_tokenizers.Whitespace()
    tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]")
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bag")
    ids = torch.tensor([[2, 3, 4, 5], [2, 3, 4, 6]])
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=512)
    program = torch.export.export(Bag().eval(), (ids,), dynamic_shapes=({0: batch, 1: length},))
    torch.export.save(program, str(folder / "bag.pt2"))
    word_tokenizer(folder / "tokenizer.json")
    return folder


def explain(*args, **kwargs):
    return lrp("explain", *args, **kwargs)


def results(run) -> list[dict]:
    return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]


def test_a_text_the_tokenizer_panics_on_fails_alone_named_and_quietly(bag, tmp_path, capfd):
    """A Split pre-tokenizer with the catastrophic regex (a+)+$: Oniguruma gives up on 'aaa...a!' and the
    Rust library panics (a BaseException). That text fails, named by its line; the others are explained;
    none of Rust's panic report reaches the terminal."""
    tokenizer = word_tokenizer(tmp_path / "panics.json", pattern="(a+)+$")
    texts = tmp_path / "texts.txt"
    texts.write_text("the film\n" + "a" * 40 + "!\nbad plot\n" + "a" * 50 + "!\n")
    run = explain(bag / "bag.pt2", texts, "--tokenizer", tokenizer, "--format", "jsonl")
    refused(run, 5, f"{texts}: line 2: the tokenizer failed on this text", f"{texts}: line 4:", "retry-limit-in-match", "2 of 4 text(s) failed")
    assert [row["id"] for row in results(run)] == ["1", "3"]
    assert "panicked at" not in capfd.readouterr().err


def test_a_text_the_tokenizer_panics_on_stops_check_conservation_named(bag, tmp_path):
    tokenizer = word_tokenizer(tmp_path / "panics.json", pattern="(a+)+$")
    texts = tmp_path / "texts.txt"
    texts.write_text("the film\n" + "a" * 40 + "!\n")
    refused(lrp("check-conservation", bag / "bag.pt2", texts, "--tokenizer", tokenizer), 5, f"{texts}: line 2: the tokenizer failed on this text")


def test_a_jsonl_text_nested_too_deeply_fails_alone_named(bag, tmp_path):
    texts = tmp_path / "texts.jsonl"
    deep = "[" * 10_000 + "]" * 10_000
    huge = "9" * 5000
    texts.write_text(
        '{"t": "the film was good"}\n'
        f'{{"t": "bad plot", "x": {deep}}}\n'
        f'{{"t": "the plot", "n": {huge}}}\n'
        '{"t": "bad film"}\n'
    )
    run = explain(bag / "bag.pt2", texts, "--tokenizer", bag / "tokenizer.json", "--text-col", "t", "--format", "jsonl")
    refused(run, 5, f"{texts}: line 2: JSON nested too deeply to read", f"{texts}: line 3: not readable JSON (Exceeds the limit (4300 digits)", "2 of 4 text(s) failed")
    assert [row["text"] for row in results(run)] == ["the film was good", "bad film"]


def test_a_csv_cell_past_the_field_limit_fails_its_row_alone_named(bag, tmp_path):
    import csv

    texts = tmp_path / "texts.csv"
    texts.write_text(f"id,t\nr1,the film was good\nr2,{'good ' * (csv.field_size_limit() // 5 + 10)}\nr3,bad plot\n")
    run = explain(bag / "bag.pt2", texts, "--tokenizer", bag / "tokenizer.json", "--text-col", "t", "--id-col", "id", "--format", "jsonl")
    refused(run, 5, f"{texts}: row 3: not readable CSV (a cell longer than Python's csv field limit of {csv.field_size_limit():,} characters)", "1 of 3 text(s) failed")
    assert [row["id"] for row in results(run)] == ["r1", "r3"]


def test_a_tokenizer_with_more_tokens_than_the_embedding_names_both_sizes(bag, tmp_path):
    bigger = word_tokenizer(tmp_path / "bigger.json", VOCAB + [f"w{i}" for i in range(40)])
    texts = tmp_path / "texts.txt"
    texts.write_text("the film\nw30 plot\n")
    for command in ("explain", "check-conservation", "evaluate"):
        out = ["-o", tmp_path / command] if command == "evaluate" else []
        run = lrp(command, bag / "bag.pt2", texts, "--tokenizer", bigger, *out)
        refused(run, 4, f"{bigger}: the tokenizer's vocabulary has 50 tokens (ids up to 49) but the model's token embedding has 10 rows")


def test_a_pad_id_past_the_embedding_is_named(bag, tmp_path):
    padded = word_tokenizer(tmp_path / "padded.json", pad_id=99)
    texts = tmp_path / "texts.txt"
    texts.write_text("the film was good\nbad plot\n")
    run = explain(bag / "bag.pt2", texts, "--tokenizer", padded, "--format", "jsonl")
    refused(run, 4, f"{padded}: the tokenizer pads with id 99 ([PAD]), past the model's token embedding of 10 rows", "vocabulary has 10 tokens")
