"""A language model's generated tokens explained: time and peak memory per explained token (issue 28 item 5).

    python benchmarks/llm_speed.py            # Llama-shaped, ~100M parameters, 128-token prompt, 16 generated
                                              # tokens; writes benchmarks/llm_speed_results.md
    python benchmarks/llm_speed.py --medium   # ~26M parameters, the same 128 + 16 tokens (a quarter of the time)
    python benchmarks/llm_speed.py --small    # ~5M parameters, 64 + 8 tokens (a quick run)
    python benchmarks/llm_speed.py --toy      # tiny, seconds (tests/test_benchmarks_run.py runs it)

The model is transformers' LlamaForCausalLM with random weights (eager attention). The prompt is random ids;
the generated tokens are transformers' own greedy ``generate``, made before anything is timed. Then every
generated token is explained over every token before it, by:

- ``gradient``: one forward over prompt + generated tokens (``inputs_embeds``, parameters frozen), then one
  ``torch.autograd.grad`` of each generated token's logit (at the position that predicted it), the graph
  retained between them; relevance ``grad * embedding`` summed over the hidden units.
- ``lrpcli``: ``Explainer(Logits(model), "attnlrp").explain_starts(ids, seeds)`` as
  ``lrpcli.runs.generate.explain_generations`` walks it by default: one recorded forward of the sequence, then
  one read-only walk per seed (N walks on the same recorded values, no copy of them).
- ``lrpcli seeds batched``: ``explain(ids repeated N times, init=seed)``: the N seeds walked together on the
  sequence repeated (``seeds_per_walk=N``; N times the memory).
- ``lrpcli 1 seed/walk``: ``explain`` once per seed (N forwards and N walks of batch 1).
- ``lxt``: LXT 2.1's efficient AttnLRP (``monkey_patch`` of transformers' Llama modules), then exactly the
  ``gradient`` code above; in a process of its own, since it patches classes process-wide.

Time: gradient and both lrpcli rows round-robin in one process (one warm-up call each, lrpcli's graph capture
included in it; then ``--reps`` rounds, the median), divided by the number of explained tokens. ``--cpu-time``:
the process's CPU time on one thread, the fastest of the rounds, instead (on a machine others load). Memory: each
method in a fresh process: one warm-up call, then the high-water mark of the resident set (/proc/self/status
VmHWM, reset through /proc/self/clear_refs, the quantity getrusage's ru_maxrss reports) during a second call,
minus the resident set before it, with ``MALLOC_MMAP_THRESHOLD_=131072`` so that freed tensors go back to the
system. That is the peak of explaining all N tokens: memory is not per token, so the table's MiB are per run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # lxt_support: LXT's import with the torchvision shim

SIZES = {
    "100M": dict(hidden=768, layers=12, heads=12, kv_heads=4, intermediate=2048, vocab=16000, prompt=128, new=16),
    "medium": dict(hidden=512, layers=6, heads=8, kv_heads=4, intermediate=1376, vocab=8000, prompt=128, new=16),
    "small": dict(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=688, vocab=4000, prompt=64, new=8),
    "toy": dict(hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64, vocab=64, prompt=12, new=3),
}
IN_PROCESS = ("gradient", "lrpcli", "lrpcli seeds batched", "lrpcli 1 seed/walk")
METHODS = IN_PROCESS + ("lxt",)
TARGET = 1.5
NOT_IMPORTABLE = 77  # a probe's exit code where LXT does not import


def build_llm(size: str, *, lxt: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, sequence (1, prompt + new), positions, tokens): the model and its greedy continuation; each
    generated token ``tokens[k]`` was predicted at ``positions[k]``."""
    import transformers
    from transformers.models.llama import modeling_llama

    if lxt:
        from lxt_support import _import_lxt

        efficient = _import_lxt()
        efficient.monkey_patch(modeling_llama, efficient.models.llama.attnLRP)
    s = SIZES[size]
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], max_position_embeddings=s["prompt"] + s["new"],
        pad_token_id=0, bos_token_id=1, eos_token_id=None, attn_implementation="eager",
    )
    model = modeling_llama.LlamaForCausalLM(config).eval().to(device=device, dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    prompt = torch.randint(2, s["vocab"], (1, s["prompt"]), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        sequence = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=s["new"], min_new_tokens=s["new"],
                                  do_sample=False, pad_token_id=0)
    positions = list(range(s["prompt"] - 1, s["prompt"] + s["new"] - 1))
    tokens = sequence[0, s["prompt"] :].tolist()
    return model, sequence, positions, tokens


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_method(method: str, model, sequence: torch.Tensor, positions: list[int], tokens: list[int]) -> Callable[[], torch.Tensor]:
    """A call that explains every generated token: (tokens, sequence length) relevance per token before it."""
    if method == "lrpcli":  # runs/generate.py's default: one recorded forward, one read-only walk per seed
        from lrpcli import Explainer
        from lrpcli.sources.hf import Logits

        explainer = Explainer(Logits(model).eval(), "attnlrp")

        def seed_of(k):
            def seed(outputs):
                initial = torch.zeros_like(outputs)
                initial[0, positions[k], tokens[k]] = outputs[0, positions[k], tokens[k]]
                return initial
            return seed

        def recorded_once() -> torch.Tensor:
            _, maps = explainer.explain_starts(sequence, [seed_of(k) for k in range(len(tokens))])
            return torch.cat(maps)

        return recorded_once
    if method.startswith("lrpcli"):
        from lrpcli import Explainer
        from lrpcli.sources.hf import Logits

        explainer = Explainer(Logits(model).eval(), "attnlrp")
        per_walk = 1 if method == "lrpcli 1 seed/walk" else len(tokens)

        def lrpcli_walks() -> torch.Tensor:
            rows = []
            for start in range(0, len(tokens), per_walk):
                chunk = range(start, min(start + per_walk, len(tokens)))

                def seed(outputs, targets, chunk=chunk):  # as runs/generate.py seeds a walk: the token's logit
                    initial = torch.zeros_like(outputs)
                    for row, k in enumerate(chunk):
                        initial[row, positions[k], tokens[k]] = outputs[row, positions[k], tokens[k]]
                    return initial

                rows.append(explainer.explain(sequence.expand(len(chunk), -1).clone(), init=seed).relevance)
            return torch.cat(rows)

        return lrpcli_walks

    def gradient() -> torch.Tensor:  # LXT's efficient mode too: its patched modules change the gradient itself
        emb = model.get_input_embeddings()(sequence).detach().requires_grad_()
        logits = model(inputs_embeds=emb, use_cache=False).logits
        rows = []
        for k, (position, token) in enumerate(zip(positions, tokens)):
            (grad,) = torch.autograd.grad(logits[0, position, token], emb, retain_graph=k < len(tokens) - 1)
            rows.append((grad * emb).sum(-1)[0])
        return torch.stack(rows)

    return gradient


# --------------------------------------------------------------------------- measuring processes


def probe(size: str, group: str, reps: int, memory: bool = False) -> dict[str, Any]:
    """Median seconds per explained token of each method of ``group`` ("main" or "lxt"), round-robin; with
    ``memory``, also each method's peak (``mib:METHOD``) measured in this same process (the toy run's shortcut)."""
    if group == "lxt":
        try:
            from lxt_support import _import_lxt

            _import_lxt()
        except ImportError as error:
            print(f"{type(error).__name__}: {error}", file=sys.stderr)
            sys.exit(NOT_IMPORTABLE)
    model, sequence, positions, tokens = build_llm(size, lxt=group == "lxt")
    names = ("lxt",) if group == "lxt" else IN_PROCESS
    runs = {m: make_method("gradient" if m == "lxt" else m, model, sequence, positions, tokens) for m in names}
    for run in runs.values():
        run()  # warm-up (lrpcli captures its graph here)
    times: dict[str, list[float]] = {m: [] for m in runs}
    cpu = bool(os.environ.get("LRP_BENCH_CPU"))
    clock = time.process_time if cpu else time.perf_counter
    for _ in range(reps):
        for method, run in runs.items():
            started = clock()
            run()
            times[method].append(clock() - started)
    result: dict[str, Any] = {"params": parameter_count(model), "tokens": len(tokens)}
    result.update({m: (min(t) if cpu else statistics.median(t)) / len(tokens) for m, t in times.items()})
    if memory:
        result.update({f"mib:{m}": peak_mib(run) for m, run in runs.items()})
    return result


def memory_probe(size: str, method: str) -> None:
    """Child: the resident set's peak above what it held, during one explanation of all generated tokens."""
    model, sequence, positions, tokens = build_llm(size, lxt=method == "lxt")
    run = make_method("gradient" if method == "lxt" else method, model, sequence, positions, tokens)
    run()
    print(json.dumps({"peak_mib": peak_mib(run)}))


def peak_mib(run: Callable[[], Any]) -> float:
    """The resident set's high-water mark above what the process holds, during one call of ``run``."""
    held = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    run()
    return (_rss_kib("VmHWM") - held) / 1024


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or dict(os.environ))


def _finish(process: subprocess.Popen) -> dict | None:
    out, err = process.communicate()
    if process.returncode == NOT_IMPORTABLE:
        return None
    if process.returncode != 0:
        last = err.strip().splitlines()[-1] if err.strip() else f"exit {process.returncode}"
        print(f"  {' '.join(process.args[2:])} failed: {last}", file=sys.stderr)
        return {}
    return json.loads(out.strip().splitlines()[-1])


def table(rows: list[tuple[str, float | None, float | None]], unit: str = "s/token") -> list[str]:
    """Markdown rows: method, time, time / gradient's, peak MiB, MiB / gradient's."""
    base_t = next((t for m, t, _ in rows if m == "gradient"), None)
    base_m = next((b for m, _, b in rows if m == "gradient"), None)

    def ratio(value, base):
        return f"{value / base:.2f}x" if value is not None and base else "n/a"

    lines = [f"| method | {unit} | time / gradient | peak MiB | memory / gradient |", "|---|---:|---:|---:|---:|"]
    for method, seconds, mib in rows:
        lines.append(f"| {method} | {'n/a' if seconds is None else f'{seconds:.4f}'} | {ratio(seconds, base_t)} | "
                     f"{'n/a' if mib is None else f'{mib:.1f}'} | {ratio(mib, base_m)} |")
    return lines


def measure(size: str, reps: int, toy: bool = False) -> tuple[dict, list[tuple[str, float | None, float | None]]]:
    """Times and peaks per method. Full runs: timing in two processes (lrpcli with the gradient; LXT), memory in
    a fresh process per method, one after another. ``toy``: LXT's process runs beside this one, which measures
    the rest itself, memory included (a run that checks the script works, not its numbers)."""
    if toy:
        lxt_process = _start("--probe", size, "lxt", str(reps), "--memory")
        times = probe(size, "main", reps, memory=True)
        lxt = _finish(lxt_process)
        times.update(lxt or {})
    else:
        times = _finish(_start("--probe", size, "main", str(reps))) or {}
        lxt = _finish(_start("--probe", size, "lxt", str(reps)))
        times.update(lxt or {})
        memory_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        for method in METHODS:
            if method != "lxt" or lxt is not None:
                times[f"mib:{method}"] = (_finish(_start("--memory-probe", size, method, env=memory_env)) or {}).get("peak_mib")
    rows = [(m, times.get(m), times.get(f"mib:{m}")) for m in IN_PROCESS]
    rows.append(("lxt", times.get("lxt"), times.get("mib:lxt")) if lxt is not None else ("lxt (does not import)", None, None))
    return times, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="~8M parameters, 64 + 8 tokens")
    parser.add_argument("--medium", action="store_true", help="~26M parameters, the issue's 128 + 16 tokens (a quarter of the 100M run's time)")
    parser.add_argument("--toy", action="store_true", help="tiny sizes, seconds (the test's run)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time = the process's CPU time on one thread, the fastest of --reps (for a machine others load: wall clock is theirs too)")
    parser.add_argument("--out", type=Path, help="the results file (default: benchmarks/llm_speed_results.md for the full size)")
    parser.add_argument("--probe", nargs=3, metavar=("SIZE", "GROUP", "REPS"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-probe", nargs=2, metavar=("SIZE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_time:
        os.environ["LRP_BENCH_CPU"] = "1"  # the probes' children read it
    if os.environ.get("LRP_BENCH_CPU"):
        torch.set_num_threads(1)
    if args.toy or os.environ.get("LRP_BENCH_TOY"):
        torch.set_num_threads(1)  # tiny tensors: threads only wait for each other on a loaded machine
        os.environ["LRP_BENCH_TOY"] = "1"
    if args.probe:
        print(json.dumps(probe(args.probe[0], args.probe[1], int(args.probe[2]), memory=args.memory)))
        return None
    if args.memory_probe:
        return memory_probe(*args.memory_probe)
    size = "toy" if args.toy else "small" if args.small else "medium" if args.medium else "100M"
    s = SIZES[size]
    print(f"Llama {size}: {s['prompt']}-token prompt, {s['new']} generated tokens ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    times, rows = measure(size, 1 if args.toy else args.reps, toy=args.toy)
    elapsed = time.perf_counter() - started
    header = (f"Llama-shaped ({times.get('params', 0) / 1e6:.1f}M parameters, {s['layers']} layers, width {s['hidden']}, "
              f"vocabulary {s['vocab']}), {s['prompt']}-token prompt, {s['new']} generated tokens, float32, CPU, "
              f"{torch.get_num_threads()} threads")
    lines = table(rows)
    print(header)
    print("\n".join(lines))
    out = args.out or (None if size != "100M" else ROOT / "benchmarks" / "llm_speed_results.md")
    if out is None:
        return
    command = "python benchmarks/llm_speed.py" + (" --small" if args.small else " --medium" if args.medium else "") + (f" --reps {args.reps}" if args.reps != 3 else "") + (" --cpu-time" if args.cpu_time else "")
    text = [
        "# A language model's generated tokens explained: time and memory per token against the gradient",
        "",
        f"Generated by `{command}` on {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} "
        f"({platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; the whole run took {elapsed:.0f} s).",
        "",
        header + (". Time: CPU time of the process, one thread, the fastest of the reps, per explained token." if args.cpu_time
                  else ". Time: median of the reps, per explained token.") + " Peak MiB: the resident set's high-water mark",
        "above what the process held, while explaining all generated tokens once (see the script's docstring).",
        f"The issue's goal: lrpcli within {TARGET}x the gradient's time and memory.",
        "",
        *lines,
        "",
        "This machine's 2 cores are shared with other engineers running tests: the times are noisy (a few tens of",
        "percent between runs); the memory column is not affected by the load.",
    ]
    out.write_text("\n".join(text) + "\n", encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
