"""Texts through `lrp explain`, streamed: texts per second and flat memory, 10k against 100k lines.

    python benchmarks/text_speed.py                 # writes benchmarks/text_results.md
    python benchmarks/text_speed.py --lines 2000    # a smoke run (and 10x that)
    python benchmarks/text_speed.py --models bag:10000,lstm:500,transformer:500

Each run is the real command line, `lrp explain SPEC TEXTS -o OUT.jsonl -q`, in a fresh process,
on a file of held-out sample texts repeated to N lines. Peak memory is the child's maximum
resident set (getrusage), measured for N and 10 N lines in the same session: a streaming run's
peak must not grow with the number of lines. Texts per second counts the whole command (start-up,
capture, tokenizing, explaining, writing), so the shorter run pays its start-up over fewer texts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models" / "text_sentiment"
OUT = ROOT / "benchmarks" / "text_results.md"


def make_texts(path: Path, lines: int) -> None:
    source = (SAMPLES / "texts.txt").read_text(encoding="utf-8").splitlines()
    with path.open("w", encoding="utf-8") as handle:
        for i in range(lines):
            handle.write(source[i % len(source)] + "\n")


def run(spec: Path, texts: Path, out: Path, batch: int) -> tuple[float, float]:
    """Wall seconds and the child's peak RSS in MiB of one `lrp explain` run in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    command = [sys.executable, "-m", "lrpcli.cli", "explain", str(spec), str(texts), "-o", str(out), "-q", "-b", str(batch)]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        raise SystemExit("the child's peak RSS did not exceed an earlier child's: run each size in its own benchmark process (use --only)")
    return seconds, peak / 1024


def child(spec: str, lines: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        texts, out = Path(folder) / "texts.txt", Path(folder) / "out.jsonl"
        make_texts(texts, lines)
        seconds, peak = run(Path(spec), texts, out, batch)
        with out.open() as handle:
            count = sum(1 for _ in handle)
        print(json.dumps({"lines": lines, "rows": count, "seconds": seconds, "peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000, help="the smaller run's lines (the larger has 10x)")
    parser.add_argument("--models", default="bag", help="comma-separated sample specs of sample_models/text_sentiment (bag,lstm,transformer), each optionally with its own line count: bag:10000,lstm:500")
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    rows = []
    for item in args.models.split(","):
        model, _, count = item.partition(":")
        spec = SAMPLES / f"{model}.yaml"
        base = int(count) if count else args.lines
        for lines in (base, 10 * base):
            # each size in a process of its own, so that RUSAGE_CHILDREN's maximum is this run's
            done = subprocess.run([sys.executable, __file__, "--child", str(spec), str(lines), str(args.batch_size)], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{model}, {lines} lines: the run failed:\n{done.stderr[-2000:]}")
            record = json.loads(done.stdout.strip().splitlines()[-1])
            record["model"] = model
            rows.append(record)
            print(f"{model}: {lines} lines in {record['seconds']:.1f} s ({lines / record['seconds']:.0f} texts/s), peak {record['peak_mib']:.0f} MiB", flush=True)
    lines_out = [
        "# Texts through `lrp explain`: throughput and memory",
        "",
        f"Written by `python benchmarks/text_speed.py {' '.join(sys.argv[1:])}` on {datetime.date.today()}: python {platform.python_version()}, "
        f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '2')}, batch {args.batch_size}. "
        "Each row is one `lrp explain SPEC TEXTS -o OUT.jsonl -q` in a fresh process (start-up and capture included); "
        "peak = the process's maximum resident set.",
        "",
        "| model | lines | result rows | seconds | texts / s | peak MiB | peak vs. the 10x smaller run |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in rows:
        smaller = next(r for r in rows if r["model"] == record["model"])
        lines_out.append(
            f"| {record['model']} | {record['lines']} | {record['rows']} | {record['seconds']:.1f} | {record['lines'] / record['seconds']:.0f} "
            f"| {record['peak_mib']:.0f} | {record['peak_mib'] / smaller['peak_mib']:.2f}x |"
        )
    args.out.write_text("\n".join(lines_out) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
