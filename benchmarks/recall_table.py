"""Which context pair made the recall model answer? The ground-truth table of sample_models/recall_lm.

    python benchmarks/recall_table.py                    # prints the table of benchmarks/recall_results.md
    python benchmarks/recall_table.py --limit 50         # a quicker look at the first 50 prompts
    python benchmarks/recall_table.py --out table.md     # also writes it to a file

The sample (``sample_models/recall_lm``, see its make_recall_lm.py) answers "k1 v1 ... k7 v7 | k2 ->" with the
value of the queried key, so the pair that holds the answer is known. For each held-out prompt, each method
gives one score per prompt token; a pair's score is the sum over its key and value tokens, and the method is
right on that prompt when its top pair is the pair that holds the answer (chance: 1 in 7).

Methods: ``attnlrp`` and ``cp_lrp`` from the real command line (``lrp explain FOLDER prompts.txt -c C
--max-new-tokens 1``, ``generated[0].relevance`` of each JSON line, float64); gradient x input, computed here
with torch.autograd on the transformers model (the answer logit's gradient at the token embeddings, times the
embeddings, summed over the hidden size: what token relevance means in lrp); and the last layer's attention
weights (transformers, eager attention, ``output_attentions=True``) in the row of the last position, averaged
over the heads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_models" / "recall_lm"
N_PAIRS = 7
COMPOSITES = ("attnlrp", "cp_lrp")


def pair_scores(scores: list[float]) -> list[float]:
    """Per context pair, the sum of the scores of its key (token 2i) and value (token 2i + 1)."""
    return [scores[2 * i] + scores[2 * i + 1] for i in range(N_PAIRS)]


def top_pair(scores: list[float]) -> int:
    pairs = pair_scores(scores)
    return max(range(N_PAIRS), key=pairs.__getitem__)


def lrp_scores(folder: Path, prompts: Path, composite: str) -> dict[str, dict]:
    """``lrp explain`` in a fresh process: per prompt id, the answer token and its relevance per prompt token."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jsonl"
        command = [sys.executable, "-m", "lrpcli.cli", "explain", str(folder), str(prompts), "-c", composite,
                   "--max-new-tokens", "1", "--dtype", "float64", "-q", "-o", str(out)]
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return {row["id"]: {"answer": row["generated"][0]["token"], "scores": row["generated"][0]["relevance"]} for row in rows}


def torch_scores(folder: Path, prompts: list[dict]) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, str]]:
    """Gradient x input and the last layer's mean attention per prompt token, and the model's answer."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").double().eval()
    index = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    names = {i: t for t, i in index.items()}
    gxi, attention, answers = {}, {}, {}
    for prompt in prompts:
        ids = torch.tensor([[index[t] for t in prompt["text"].split()]])
        embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        outputs = model(inputs_embeds=embeddings, output_attentions=True)
        logits = outputs.logits[0, -1]
        answer = int(logits.argmax())
        (gradient,) = torch.autograd.grad(logits[answer], embeddings)
        gxi[prompt["id"]] = (gradient * embeddings).sum(-1)[0].tolist()
        attention[prompt["id"]] = outputs.attentions[-1][0, :, -1].mean(0).tolist()
        answers[prompt["id"]] = names[answer]
    return gxi, attention, answers


def measure(folder: Path, limit: int | None) -> dict:
    prompts = [json.loads(line) for line in (folder / "prompts.jsonl").read_text(encoding="utf-8").splitlines()][:limit]
    with tempfile.TemporaryDirectory() as tmp:
        texts = Path(tmp) / "prompts.txt"
        texts.write_text("".join(p["text"] + "\n" for p in prompts), encoding="utf-8")
        methods = {}
        answers = None
        for composite in COMPOSITES:
            rows = lrp_scores(folder, texts, composite)
            methods[composite] = {p["id"]: rows[p["id"]]["scores"] for p in prompts}
            answers = answers or {i: row["answer"] for i, row in rows.items()}
    gxi, attention, torch_answers = torch_scores(folder, prompts)
    methods["gradient x input"] = gxi
    methods["last-layer attention (mean over heads)"] = attention
    assert torch_answers == answers, "lrp's greedy answer differs from transformers' on some prompt"
    correct = [p for p in prompts if answers[p["id"]] == p["answer"]]
    table = {}
    for name, scores in methods.items():
        hits = [top_pair(scores[p["id"]]) == p["pair"] for p in prompts]
        hits_correct = [top_pair(scores[p["id"]]) == p["pair"] for p in correct]
        value_top = [max(range(len(s := scores[p["id"]][: 2 * N_PAIRS])), key=s.__getitem__) == 2 * p["pair"] + 1 for p in prompts]
        share = []  # the right pair's share of the context's absolute score
        query = []  # the query key's share of all tokens' absolute score
        for p in prompts:
            s = scores[p["id"]]
            context = sum(abs(v) for v in s[: 2 * N_PAIRS])
            share.append((abs(s[2 * p["pair"]]) + abs(s[2 * p["pair"] + 1])) / context if context else 0.0)
            query.append(abs(s[2 * N_PAIRS + 1]) / sum(abs(v) for v in s) if any(s) else 0.0)
        table[name] = {
            "top_pair": sum(hits) / len(hits),
            "top_pair_correct": sum(hits_correct) / max(1, len(hits_correct)),
            "value_top": sum(value_top) / len(value_top),
            "share": sum(share) / len(share),
            "query_share": sum(query) / len(query),
        }
    return {"prompts": len(prompts), "accuracy": len(correct) / len(prompts), "table": table}


def markdown(result: dict, seconds: float) -> str:
    lines = [
        "# Ground truth for language-model explanations: the recall sample",
        "",
        f"`python benchmarks/recall_table.py` on {result['prompts']} held-out prompts of `sample_models/recall_lm` "
        f"({time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}, {seconds:.0f} s). The model answers "
        f"{result['accuracy']:.1%} of them correctly. Chance for the top pair is 1/7 = 14.3%.",
        "",
        "| method | top pair is the right one | (on correctly answered prompts) | top context token is the answer's value token | right pair's share of the context's abs. score | query key's share of all abs. score |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["table"].items():
        lines.append(
            f"| {name} | {row['top_pair']:.1%} | {row['top_pair_correct']:.1%} | {row['value_top']:.1%} | {row['share']:.1%} | {row['query_share']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=SAMPLE)
    parser.add_argument("--limit", type=int, default=None, help="the first N held-out prompts only")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    began = time.perf_counter()
    result = measure(args.folder, args.limit)
    text = markdown(result, time.perf_counter() - began)
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")

if __name__ == "__main__":
    main()
