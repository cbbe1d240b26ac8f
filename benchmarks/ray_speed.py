"""``lrp explain ROWS --ray`` against a plain run: the overhead ratio of the Ray executor, and the driver's memory.

The breast-cancer sample's 100 rows repeated (new ids) to --rows rows, and the shapes sample's 8 images copied to
--images files, explained by whole ``lrp`` processes: plain, and --ray --workers 1 and 2 on a local cluster started by
the run itself (ray.init inside lrp: the cluster start is part of the time, as a user sees it), after one plain run
that fills the graph cache. Row outputs are checked byte-equal, image summaries for the same inputs and predictions. The driver's peak resident memory is read by
the process itself (getrusage; Ray's own processes are not counted), at --rows and at a tenth of them. Needs the ray
extra. Writes benchmarks/ray_results.md.

    python benchmarks/ray_speed.py [--rows 200000] [--images 2000] [--batch-size 4096] [--no-images] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "breast_cancer_mlp"
OUT = ROOT / "benchmarks" / "ray_results.md"

RUN = """
import resource, sys
from lrpcli.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)
"""


def make_rows(path: Path, count: int) -> None:
    rows = list(csv.reader((SAMPLE / "sample.csv").open(newline="")))
    header, body = rows[0], rows[1:]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for i in range(count):
            row = list(body[i % len(body)])
            row[0] = str(i)
            writer.writerow(row)


def run(args: list[str]) -> tuple[float, float]:
    """Seconds and the driver's peak MiB of one ``lrp`` process."""
    env = {**os.environ, "RAY_ADDRESS": ""}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"lrp {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds, float(done.stderr.strip().splitlines()[-1])


def image_runs(tmp: Path, count: int) -> dict[str, tuple[float, float]]:
    import shutil

    shapes = ROOT / "sample_models" / "shapes_minivgg"
    folder = tmp / "images"
    folder.mkdir()
    sources = sorted((shapes / "images").iterdir())
    for i in range(count):
        shutil.copyfile(sources[i % len(sources)], folder / f"{i:05d}-{sources[i % len(sources)].name}")
    spec = str(shapes / "model.yaml")
    run(["explain", spec, str(sources[0]), "-q", "--no-report", "-o", str(tmp / "warm-images")])
    results = {}
    for name, extra in (("plain", []), ("--ray --workers 1", ["--ray", "--workers", "1"]), ("--ray --workers 2", ["--ray", "--workers", "2"])):
        out = tmp / f"images-{name.replace(' ', '_')}"
        results[name] = run(["explain", spec, str(folder), "-q", "--no-report", "-o", str(out), *extra])
        print(name, count, "images", results[name], file=sys.stderr)
    plain = [(r["input"], r["prediction"]) for r in csv.DictReader((tmp / "images-plain" / "summary.csv").open())]
    for name in ("--ray_--workers_1", "--ray_--workers_2"):
        got = [(r["input"], r["prediction"]) for r in csv.DictReader((tmp / f"images-{name}" / "summary.csv").open())]
        assert got == plain and len(plain) == count, f"{name}: the image summary differs from the plain run's"
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--no-images", action="store_true", help="the rows table only")
    parser.add_argument("--out", type=Path, default=OUT)
    options = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        spec = str(SAMPLE / "model.yaml")
        results = {}
        make_rows(tmp / "warm.csv", 100)
        run(["explain", spec, str(tmp / "warm.csv"), "-q", "--no-report", "-o", str(tmp / "warm-out.csv")])
        for count in (options.rows // 10, options.rows):
            rows = tmp / f"rows-{count}.csv"
            make_rows(rows, count)
            for name, extra in (("plain", []), ("--ray --workers 1", ["--ray", "--workers", "1"]), ("--ray --workers 2", ["--ray", "--workers", "2"])):
                out = tmp / f"{name.replace(' ', '_')}-{count}.csv"
                results[name, count] = run(["explain", spec, str(rows), "-q", "--no-report", "-b", str(options.batch_size), "-o", str(out), *extra])
                print(name, count, results[name, count], file=sys.stderr)
            plain = (tmp / f"plain-{count}.csv").read_bytes()
            for name in ("--ray_--workers_1", "--ray_--workers_2"):
                assert (tmp / f"{name}-{count}.csv").read_bytes() == plain, f"{name} differs from the plain run at {count} rows"
        images = image_runs(tmp, options.images) if not options.no_images else None
    n = options.rows
    lines += [
        "# lrp explain --ray: the overhead against a plain run",
        "",
        f"{n:,} rows of sample_models/breast_cancer_mlp (sample.csv repeated), -b {options.batch_size}, whole `lrp` processes",
        f"(the local Ray cluster started inside each --ray run), outputs byte-equal; {platform.machine()}, {os.cpu_count()} CPU(s),",
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end (a shared machine: compare rows of one run).",
        "Produced by `python benchmarks/ray_speed.py` in a venv with the ray extra.",
        "",
        "| run | seconds | rows/s | vs plain | driver peak MiB, " + f"{n // 10:,} rows | driver peak MiB, {n:,} rows |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("plain", "--ray --workers 1", "--ray --workers 2"):
        seconds, peak = results[name, n]
        lines.append(f"| {name} | {seconds:.2f} | {n / seconds:,.0f} | {seconds / results['plain', n][0]:.2f}x | {results[name, n // 10][1]:.0f} | {peak:.0f} |")
    if images is None:
        options.out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    lines += [
        "",
        f"{options.images:,} images of sample_models/shapes_minivgg (its 8 images copied), -b 16, heatmaps and arrays written:",
        "",
        "| run | seconds | images/s | vs plain | driver peak MiB |",
        "|---|---|---|---|---|",
    ]
    for name in ("plain", "--ray --workers 1", "--ray --workers 2"):
        seconds, peak = images[name]
        lines.append(f"| {name} | {seconds:.2f} | {options.images / seconds:,.0f} | {seconds / images['plain'][0]:.2f}x | {peak:.0f} |")
    options.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
