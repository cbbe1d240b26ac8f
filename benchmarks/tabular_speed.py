"""200,000 rows of the diabetes sample through ``lrp explain`` end to end, beside a floor script.

The floor (imports included): pyarrow reads the CSV, the TorchScript model computes gradient x input in
torch, pyarrow writes the relevance CSV. Both run as whole processes, side by side in one run, with a warm
graph cache (LRP_CACHE_DIR in a temporary folder, one run first). With --memory, also the peak memory of
--memory-rows rows (default 2,000,000) against 1/100 of them, for CSV, JSON lines and Parquet in.
Writes benchmarks/tabular_results.md.

    python benchmarks/tabular_speed.py [--rows 200000] [--repeat 3] [--memory]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "diabetes_mlp"

FLOOR = '''
import sys
import numpy as np
import pyarrow as pa, pyarrow.csv as pacsv
import torch
features = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
mean = torch.tensor({mean})
std = torch.tensor({std})
table = pacsv.read_csv(sys.argv[1], convert_options=pacsv.ConvertOptions(column_types={{"id": pa.string()}}))
model = torch.jit.load(sys.argv[2]).eval()
x = torch.from_numpy(np.column_stack([table.column(f).to_numpy() for f in features]))
x = ((x - mean) / std).float().requires_grad_(True)
y = model(x)
y.sum().backward()
relevance = (x.grad * x).detach().numpy()
out = pa.table({{"id": table.column("id"), "logit": y.detach().numpy()[:, 0], **{{f: relevance[:, k] for k, f in enumerate(features)}}}})
pacsv.write_csv(out, sys.argv[3])
'''


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


PEAK = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"


def peak_mib(command: list[str], env: dict[str, str]) -> float:
    """The peak resident memory of ``command`` (a child of a small Python process), in MiB."""
    out = subprocess.run([sys.executable, "-c", PEAK, *command], check=True, env=env, capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024


def write_rows(tmp: Path, rows: int, name: str) -> dict[str, Path]:
    """``rows`` rows of the sample (ids r0, r1, ...) as CSV, JSON lines and Parquet."""
    import json

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    lines = (SAMPLE / "sample.csv").read_text().splitlines()
    header, body = lines[0].split(","), lines[1:]
    paths = {kind: tmp / f"{name}.{kind}" for kind in ("csv", "jsonl", "parquet")}
    with open(paths["csv"], "w") as csv_file, open(paths["jsonl"], "w") as json_file:
        csv_file.write(",".join(header) + "\n")
        for i in range(rows):
            cells = body[i % len(body)].split(",")
            cells[0] = f"r{i}"
            csv_file.write(",".join(cells) + "\n")
            json_file.write(json.dumps({"id": cells[0], **{k: float(v) for k, v in zip(header[1:], cells[1:])}}) + "\n")
    table = pacsv.read_csv(paths["csv"], convert_options=pacsv.ConvertOptions(column_types={"id": pa.string(), "progression": pa.string()}))
    pq.write_table(table, paths["parquet"])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also measure peak memory of --memory-rows rows against 1/100 of them")
    parser.add_argument("--memory-rows", type=int, default=2_000_000)
    args = parser.parse_args()
    import yaml

    spec = yaml.safe_load((SAMPLE / "model.yaml").read_text())
    memory: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = write_rows(tmp, args.rows, "rows")
        floor = tmp / "floor.py"
        floor.write_text(FLOOR.format(mean=spec["input"]["mean"], std=spec["input"]["std"]))
        env = dict(os.environ, LRP_CACHE_DIR=str(tmp / "cache"))
        lrp = [str(Path(sys.executable).with_name("lrp"))]
        explain = lrp + ["explain", str(SAMPLE / "model.yaml")]
        quiet = ["-q", "--no-report"]  # the engine and the I/O; the report page is measured in a row of its own
        cases = {
            "floor (pyarrow + TorchScript grad x input)": [sys.executable, str(floor), str(rows["csv"]), str(SAMPLE / "model.ts"), str(tmp / "floor.csv")],
            "lrp explain rows.csv -o rel.csv --no-report": explain + [str(rows["csv"]), "-o", str(tmp / "out.csv"), *quiet],
            "lrp explain rows.csv -o rel.csv (and its report page, the default)": explain + [str(rows["csv"]), "-o", str(tmp / "out0.csv"), "-q"],
            "lrp explain rows.jsonl -o rel.csv --no-report": explain + [str(rows["jsonl"]), "-o", str(tmp / "out1.csv"), *quiet],
            "lrp explain rows.parquet -o rel.csv --no-report": explain + [str(rows["parquet"]), "-o", str(tmp / "out2.csv"), *quiet],
            "lrp explain rows.parquet -o rel.parquet --no-report": explain + [str(rows["parquet"]), "-o", str(tmp / "out.parquet"), *quiet],
            "lrp explain - < rows.csv > rel.csv (stdin: no page)": ["sh", "-c", " ".join(explain) + f" - -q < {rows['csv']} > {tmp / 'out3.csv'}"],
            "lrp explain - < rows.jsonl > rel.csv (stdin: no page)": ["sh", "-c", " ".join(explain) + f" - -q < {rows['jsonl']} > {tmp / 'out4.csv'}"],
            "lrp explain rows.csv --top-k 3 -o rel.csv --no-report": explain + [str(rows["csv"]), "--top-k", "3", "-o", str(tmp / "out5.csv"), *quiet],
        }
        timed(cases["lrp explain rows.csv -o rel.csv --no-report"], env)  # warm the graph cache
        results = {name: min(timed(command, env) for _ in range(args.repeat)) for name, command in cases.items()}
        if args.memory:
            small, large = write_rows(tmp, args.memory_rows // 100, "small"), write_rows(tmp, args.memory_rows, "large")
            for kind, out in (("csv", "csv"), ("jsonl", "csv"), ("parquet", "csv"), ("parquet", "parquet")):
                peaks = [peak_mib(explain + [str(paths[kind]), "-o", str(tmp / f"mem.{out}"), "-q"], env) for paths in (small, large)]
                memory.append(f"| {kind} | {out} | {peaks[0]:.1f} | {peaks[1]:.1f} | {peaks[1] - peaks[0]:+.1f} MiB |")
    floor_s = results["floor (pyarrow + TorchScript grad x input)"]
    lines = [f"| {name} | {s:.2f} | {args.rows / s:,.0f} | {s / floor_s:.2f}x |" for name, s in results.items()]
    text = "\n".join(
        [
            "# Tabular speed: lrp explain vs a floor script",
            "",
            f"{args.rows:,} rows of sample_models/diabetes_mlp (sample.csv repeated), whole processes, warm graph cache,",
            f"best of {args.repeat}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}.",
            "Produced by `python benchmarks/tabular_speed.py`.",
            "",
            "| run | seconds | rows/s | vs floor |",
            "|---|---|---|---|",
            *lines,
            "",
            *(
                [
                    f"## Memory: {args.memory_rows // 100:,} against {args.memory_rows:,} rows",
                    "",
                    "Peak resident memory of the whole `lrp explain` process (`--memory`), the report page beside the output included.",
                    "",
                    f"| input | output | peak MiB, {args.memory_rows // 100:,} rows | peak MiB, {args.memory_rows:,} rows | difference |",
                    "|---|---|---|---|---|",
                    *memory,
                    "",
                ]
                if memory
                else []
            ),
        ]
    )
    print(text)
    (ROOT / "benchmarks" / "tabular_results.md").write_text(text)


if __name__ == "__main__":
    main()
