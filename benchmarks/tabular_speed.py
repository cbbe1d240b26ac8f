"""200,000 rows of the diabetes sample through ``lrp explain`` end to end, beside a floor script.

The floor (imports included): pyarrow reads the CSV, the TorchScript model computes gradient x input in
torch, pyarrow writes the relevance CSV. Both run as whole processes, side by side in one run, with a warm
graph cache (LRP_CACHE_DIR in a temporary folder, one run first). Writes benchmarks/tabular_results.md.

    python benchmarks/tabular_speed.py [--rows 200000] [--repeat 3]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    import yaml

    spec = yaml.safe_load((SAMPLE / "model.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines = (SAMPLE / "sample.csv").read_text().splitlines()
        header, body = lines[0], lines[1:]
        with open(tmp / "rows.csv", "w") as f:
            f.write(header + "\n")
            for i in range(args.rows):
                cells = body[i % len(body)].split(",", 1)
                f.write(f"r{i},{cells[1]}\n")
        table = pacsv.read_csv(tmp / "rows.csv", convert_options=pacsv.ConvertOptions(column_types={"id": pa.string(), "progression": pa.string()}))
        pq.write_table(table, tmp / "rows.parquet")
        floor = tmp / "floor.py"
        floor.write_text(FLOOR.format(mean=spec["input"]["mean"], std=spec["input"]["std"]))
        env = dict(os.environ, LRP_CACHE_DIR=str(tmp / "cache"))
        lrp = [str(Path(sys.executable).with_name("lrp"))]
        cases = {
            "floor (pyarrow + TorchScript grad x input)": [sys.executable, str(floor), str(tmp / "rows.csv"), str(SAMPLE / "model.ts"), str(tmp / "floor.csv")],
            "lrp explain rows.csv -o rel.csv": lrp + ["explain", str(SAMPLE / "model.yaml"), str(tmp / "rows.csv"), "-o", str(tmp / "out.csv"), "-q"],
            "lrp explain rows.parquet -o rel.csv": lrp + ["explain", str(SAMPLE / "model.yaml"), str(tmp / "rows.parquet"), "-o", str(tmp / "out2.csv"), "-q"],
            "lrp explain rows.parquet -o rel.parquet": lrp + ["explain", str(SAMPLE / "model.yaml"), str(tmp / "rows.parquet"), "-o", str(tmp / "out.parquet"), "-q"],
            "lrp explain - < rows.csv (stdin: careful path)": ["sh", "-c", " ".join(lrp) + f" explain {SAMPLE / 'model.yaml'} - -q < {tmp / 'rows.csv'} > {tmp / 'out3.csv'}"],
        }
        timed(cases["lrp explain rows.csv -o rel.csv"], env)  # warm the graph cache
        results = {name: min(timed(command, env) for _ in range(args.repeat)) for name, command in cases.items()}
    floor_s = results["floor (pyarrow + TorchScript grad x input)"]
    rows = [f"| {name} | {s:.2f} | {args.rows / s:,.0f} | {s / floor_s:.2f}x |" for name, s in results.items()]
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
            *rows,
            "",
        ]
    )
    print(text)
    (ROOT / "benchmarks" / "tabular_results.md").write_text(text)


if __name__ == "__main__":
    main()
