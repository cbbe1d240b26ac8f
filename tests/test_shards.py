"""Sharded, resumable runs: shards cover every input once, merge equals one run, kills resume cleanly."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from lrpcli.sources.architectures import MLP, MiniVGG
from lrpcli.cli import main
from lrpcli.runs.shards import Shard

LRP = [sys.executable, "-m", "lrpcli.cli.__main__"]
NUMERIC = ("probability", "logit", "relevance_sum", "conservation_gap")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    torch.manual_seed(0)
    model = MiniVGG(num_classes=4, width=4).eval()
    torch.jit.save(torch.jit.script(model), str(root / "m.ts"))
    other = MiniVGG(num_classes=4, width=4).eval()
    torch.jit.save(torch.jit.script(other), str(root / "other.ts"))
    rng = np.random.default_rng(0)
    for folder, count in (("imgs", 14), ("many", 160)):
        (root / folder / "sub").mkdir(parents=True)
        for i in range(count):
            where = root / folder / ("sub" if i % 3 == 0 else "") / f"img{i:03d}.png"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(where)
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_rows(merged: list[dict[str, str]], single: list[dict[str, str]]) -> None:
    assert len(merged) == len(single)
    for a, b in zip(merged, single):
        for key in a:
            if key in NUMERIC and a[key]:
                assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), (a["input"], key)
            else:
                assert a[key] == b[key], (a["input"], key)


def test_shards_partition_the_inputs():
    names = [f"dir/img{i}.png" for i in range(500)]
    owners = [[k for k in range(1, 5) if Shard(k, 4).owns(name)] for name in names]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(o == [k] for o in owners) for k in range(1, 5)]
    assert min(sizes) > 80  # roughly even
    assert Shard.parse("2/5") == Shard(2, 5)


def test_three_shards_in_separate_processes_merge_into_the_unsharded_run(world, tmp_path):
    out, single = tmp_path / "sharded", tmp_path / "single"
    processes = [
        subprocess.Popen(LRP + ["explain", str(world / "m.ts"), str(world / "imgs"), "-o", str(out), "--shard", f"{k}/3", "-q"])
        for k in (1, 2, 3)
    ]
    assert [p.wait(timeout=300) for p in processes] == [0, 0, 0]
    manifests = sorted(out.glob("manifest.shard-*.jsonl"))
    assert len(manifests) == 3
    done = [json.loads(line)["input"] for m in manifests for line in m.read_text().splitlines() if '"kind": "input"' in line]
    assert sorted(done) == sorted(set(done)) and len(done) == 14  # every input once, in exactly one shard
    merged = CliRunner().invoke(main, ["merge", str(out)])
    assert merged.exit_code == 0, merged.output
    assert "merged 14 row(s) from shards 1/3, 2/3, 3/3" in merged.stderr
    result = CliRunner().invoke(main, ["explain", str(world / "m.ts"), str(world / "imgs"), "-o", str(single), "-q"])
    assert result.exit_code == 0
    assert_same_rows(read_rows(out / "summary.csv"), read_rows(single / "summary.csv"))
    for row in read_rows(out / "summary.csv"):
        assert (out / row["heatmap"]).is_file() and (out / row["relevance"]).is_file()
    assert json.loads((out / "conservation.json").read_text())["rows"] == 14


def test_merge_of_separate_folders_rewrites_paths(world, tmp_path):
    for k in (1, 2):
        result = CliRunner().invoke(main, ["explain", str(world / "m.ts"), str(world / "imgs"), "-o", str(tmp_path / f"part{k}"), "--shard", f"{k}/2", "-q"])
        assert result.exit_code == 0
    merged = CliRunner().invoke(main, ["merge", str(tmp_path / "part1"), str(tmp_path / "part2"), "-o", str(tmp_path / "all")])
    assert merged.exit_code == 0, merged.output
    rows = read_rows(tmp_path / "all" / "summary.csv")
    assert len(rows) == 14 and [r["input"] for r in rows] == sorted(r["input"] for r in rows)
    assert all((tmp_path / "all" / r["heatmap"]).is_file() for r in rows)
    assert rows[0]["heatmap"].startswith("../part")


def test_merge_refuses_missing_shards_unfinished_runs_and_mixed_models(world, tmp_path):
    out = tmp_path / "out"
    for k in (1, 3):
        CliRunner().invoke(main, ["explain", str(world / "m.ts"), str(world / "imgs"), "-o", str(out), "--shard", f"{k}/3", "-q"])
    missing = CliRunner().invoke(main, ["merge", str(out)])
    assert missing.exit_code == 5 and "missing 2/3" in missing.stderr
    other = tmp_path / "other"
    CliRunner().invoke(main, ["explain", str(world / "other.ts"), str(world / "imgs"), "-o", str(other), "--shard", "2/3", "-q"])
    mixed = CliRunner().invoke(main, ["merge", str(out), str(other), "-o", str(tmp_path / "m")])
    assert mixed.exit_code == 5 and "different models" in mixed.stderr
    (other / "summary.shard-2-of-3.partial.csv").write_text("input\n")
    unfinished = CliRunner().invoke(main, ["merge", str(other)])
    assert unfinished.exit_code == 5 and "unfinished" in unfinished.stderr


def test_another_model_into_the_same_folder_is_refused_unless_overwrite(world, tmp_path):
    args = [str(world / "imgs"), "-o", str(tmp_path), "-q"]
    assert CliRunner().invoke(main, ["explain", str(world / "m.ts"), *args]).exit_code == 0
    refused = CliRunner().invoke(main, ["explain", str(world / "other.ts"), *args, "--resume"])
    assert refused.exit_code == 2 and "another model" in refused.stderr and "--overwrite" in refused.stderr
    other_composite = CliRunner().invoke(main, ["explain", str(world / "m.ts"), *args, "-c", "epsilon"])
    assert other_composite.exit_code == 2 and "another composite" in other_composite.stderr
    assert CliRunner().invoke(main, ["explain", str(world / "other.ts"), *args, "--overwrite"]).exit_code == 0


def test_inputs_from_a_file_or_stdin(world, tmp_path):
    listing = tmp_path / "list.txt"
    files = sorted((world / "imgs").glob("*.png"))[:3]
    listing.write_text("# three images\n" + "\n".join(map(str, files)) + "\n\n")
    from_file = CliRunner().invoke(main, ["explain", str(world / "m.ts"), "--inputs-from", str(listing), "-o", str(tmp_path / "a"), "-q"])
    assert from_file.exit_code == 0, from_file.output
    assert [r["input"] for r in read_rows(tmp_path / "a" / "summary.csv")] == [f.name for f in files]
    from_stdin = CliRunner().invoke(main, ["explain", str(world / "m.ts"), "--inputs-from", "-", "-o", str(tmp_path / "b"), "-q"], input="\n".join(map(str, files)))
    assert from_stdin.exit_code == 0 and len(read_rows(tmp_path / "b" / "summary.csv")) == 3


def test_a_killed_run_resumes_without_redoing_or_missing_anything(world, tmp_path):
    out = tmp_path / "out"
    command = LRP + ["explain", str(world / "m.ts"), str(world / "many"), "-o", str(out), "-b", "1", "--workers", "0", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if manifest.is_file() and manifest.read_text().count('"status": "done"') >= 10:
            break
        if process.poll() is not None:
            pytest.fail("the run finished before it could be killed")
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    first = {json.loads(line)["input"] for line in manifest.read_text().splitlines() if '"status": "done"' in line}
    assert 10 <= len(first) < 160
    written_first = {p: p.stat().st_mtime_ns for p in (out / "heatmaps").rglob("*.png")}
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    done = [e["input"] for e in entries if e.get("kind") == "input" and e["status"] == "done"]
    assert len(done) == len(set(done)) == 160  # none twice, none missed
    assert {e["input"] for e in entries if e.get("kind") == "input" and e["run"] == entries[-1]["run"]}.isdisjoint(first)
    rows = read_rows(out / "summary.csv")
    assert len(rows) == 160 and len({r["input"] for r in rows}) == 160
    assert not list(out.rglob("*.tmp")) and not (out / "summary.partial.csv").exists()
    for path, mtime in written_first.items():
        if path.stem in {Path(name).stem for name in first}:
            assert path.stat().st_mtime_ns == mtime  # finished before the kill: not redone
    for row in rows:
        Image.open(out / row["heatmap"]).verify()
        assert np.load(out / row["relevance"]).shape == (3, 32, 32)


def test_check_conservation_shards_cover_the_samples_and_merge(world, tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "mlp.ts"
    torch.jit.save(torch.jit.script(MLP(6, (8,), 3, bias=False).eval()), str(model))
    out = tmp_path / "reports"
    out.mkdir()
    names = []
    for k in (1, 2):
        result = CliRunner().invoke(main, ["check-conservation", str(model), "--random", 12, "--input-shape", 6, "-c", "lrp_0", "--shard", f"{k}/2", "--json", "-q"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        names += [s["sample"] for s in report["samples"]]
        (out / f"conservation.shard-{k}-of-2.json").write_text(result.stdout)
        (out / f"summary.shard-{k}-of-2.csv").write_text("input,target,logit,conservation_gap,heatmap,relevance\n")
    assert sorted(names) == sorted(f"random-{i}" for i in range(12))
    merged = CliRunner().invoke(main, ["merge", str(out)])
    assert merged.exit_code == 0, merged.output
    joined = json.loads((out / "conservation.json").read_text())
    assert joined["passed"] and len(joined["samples"]) == 12


def test_csv_shards_concatenate_to_the_whole(tmp_path):
    samples = Path(__file__).resolve().parents[1] / "sample_models" / "diabetes_mlp"
    whole = CliRunner().invoke(main, ["explain", str(samples / "model.yaml"), str(samples / "sample.csv"), "-q"])
    parts = [CliRunner().invoke(main, ["explain", str(samples / "model.yaml"), str(samples / "sample.csv"), "--shard", f"{k}/3", "-q"]) for k in (1, 2, 3)]
    rows = lambda text: list(csv.DictReader(text.splitlines()))  # noqa: E731
    joined = sorted((r for p in parts for r in rows(p.stdout)), key=lambda r: r["id"])
    assert [r["id"] for r in joined] == sorted(r["id"] for r in rows(whole.stdout))
    assert all(len(rows(p.stdout)) < 60 for p in parts)


def test_stale_temporaries_of_this_run_are_removed_and_others_kept(world, tmp_path):
    out = tmp_path / "out"
    (out / "heatmaps" / "sub").mkdir(parents=True)
    mine = out / "heatmaps" / "sub" / ".img000.png.abc123.tmp"
    theirs = out / "heatmaps" / ".someone_else.png.def456.tmp"
    mine.write_bytes(b"half")
    theirs.write_bytes(b"half")
    result = CliRunner().invoke(main, ["explain", str(world / "m.ts"), str(world / "imgs"), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert not mine.exists() and theirs.exists()
