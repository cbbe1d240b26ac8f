"""Train and write the associative-recall language model (``recall_lm/``): a sample whose answer has a known source.

    python sample_models/recall_lm/make_recall_lm.py             # writes sample_models/recall_lm/
    python sample_models/recall_lm/make_recall_lm.py --out DIR   # somewhere else

The task (associative recall): a prompt lists seven key-value pairs and then asks for one key,

    k3 v12 k9 v1 k14 v7 k2 v2 k6 v16 k11 v5 k1 v9 | k2 ->

and the answer is that key's value (``v2``). Keys are 7 of ``k1``..``k16`` and values 7 of ``v1``..``v16``,
each drawn without replacement, so the answer appears once in the context and the pair that holds it is known:
a good explanation of the answer puts its relevance on that pair's key and value tokens.

The model is a two-layer ``transformers.LlamaForCausalLM`` (hidden size 64, 4 heads, about 0.1M parameters)
trained from scratch, saved with ``save_pretrained`` (safetensors) beside a word-level ``tokenizer.json`` built
with the ``tokenizers`` library, so ``lrp explain sample_models/recall_lm PROMPTS`` needs no spec. Recall needs an
induction circuit (a first-layer head copies each key into the value after it, and the query key into ``->``; a
second-layer head finds the value whose key matches), and from scratch a model this small sits on a long plateau
(it learns "answer one of the context's values", loss ln 7, and stays there) before it finds one: six runs without
the auxiliary loss below (learning rates 3e-3 to 1e-2, with and without (1), (2) and the wider initial weights)
were still on it after 800 to 1400 steps. Three things make training take minutes here: (1) each training sequence
asks several questions on its context (``... | k2 -> v2 | k5 -> v9 | ...``, every answer a target), (2) contexts
have 2 to 7 pairs, (3) a training-only auxiliary loss (``--aux``, weight 0.1) asks head 0 of the first layer to
attend to the previous token (attention supervision of the circuit's first half; the second layer, the one whose
attention weights the benchmark reads, is not supervised), and the initial weights are wider than transformers'
default (``INIT_STD``). Held-out prompts are all of the shipped format (7 pairs, one question, ending in ``->``);
the first question of a training sequence with 7 pairs is that format at the same positions.

Written: ``config.json``, ``generation_config.json``, ``model.safetensors``, the tokenizer files, and the
held-out prompts: ``prompts.txt`` (one per line, as ``lrp explain`` reads them; line n has id n) and
``prompts.jsonl`` (per prompt its id, text, query key, answer and ``pair``: the 0-based index of the pair that
holds the answer; its key is prompt token ``2 * pair`` and its value token ``2 * pair + 1``). Held-out prompts
come from their own seed; none of them occurs in the training data (checked).

Seeds are fixed and training runs on one thread (``--threads``): a rerun writes the same weights on the same
machine. Takes a few minutes on an idle two-core machine (the loss leaves its plateau after about 300 steps); at
the end the script prints the held-out accuracy.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
N_KEYS = N_VALUES = 16
N_PAIRS = 7
SPECIALS = ["[PAD]", "[UNK]", "[EOS]", "|", "->"]
KEYS = [f"k{i}" for i in range(1, N_KEYS + 1)]
VALUES = [f"v{i}" for i in range(1, N_VALUES + 1)]
VOCABULARY = SPECIALS + KEYS + VALUES
MAX_LENGTH = 32  # the prompt is 2 * 7 + 3 = 17 tokens; lrp pads to 32
TRAIN_SEED, HELD_OUT_SEED, MODEL_SEED = 1, 2, 3
N_HELD_OUT = 200
#: initial weights' standard deviation: transformers' 0.02 (for wide models) leaves attention uniform at width 64
#: and makes the plateau before recall far longer; about 1/sqrt(64) breaks it within a few hundred steps
INIT_STD = 0.1


def make_prompt(rng: random.Random, pairs: int = N_PAIRS) -> dict:
    """One recall prompt: its text, the query key, the answer and the index of the pair that holds it."""
    keys = rng.sample(KEYS, pairs)
    values = rng.sample(VALUES, pairs)
    pair = rng.randrange(pairs)
    context = " ".join(f"{k} {v}" for k, v in zip(keys, values))
    return {"text": f"{context} | {keys[pair]} ->", "key": keys[pair], "answer": values[pair], "pair": pair}


def tokenizer():
    """The word-level tokenizer (whitespace split; ``->`` and ``|`` are tokens of their own) as transformers' fast tokenizer."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCABULARY)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]", model_max_length=MAX_LENGTH
    )


def model_config():
    import transformers

    return transformers.LlamaConfig(
        vocab_size=len(VOCABULARY), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=MAX_LENGTH, pad_token_id=0, eos_token_id=2, bos_token_id=None,
        tie_word_embeddings=False, initializer_range=INIT_STD,
    )


def encode(prompts: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (all prompts have the same length) and the answer ids."""
    index = {t: i for i, t in enumerate(VOCABULARY)}
    ids = torch.tensor([[index[t] for t in p["text"].split()] for p in prompts])
    return ids, torch.tensor([index[p["answer"]] for p in prompts])


@torch.no_grad()
def accuracy(model, prompts: list[dict]) -> float:
    ids, answers = encode(prompts)
    return float((model(input_ids=ids).logits[:, -1].argmax(-1) == answers).float().mean())


def training_batch(rng: random.Random, batch: int, queries: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Training sequences: 2 to 7 pairs (fewer distractors shorten the plateau before recall is found; the held-out
    prompts all have 7), then several questions on that context, ``| k2 -> v2 | k5 -> v9 ...`` (each answer a
    target); right-padded, labels -100 except at the answers."""
    index = {t: i for i, t in enumerate(VOCABULARY)}
    rows, labels, texts = [], [], []
    for _ in range(batch):
        pairs = rng.randint(2, N_PAIRS)
        prompt = make_prompt(rng, pairs)
        tokens = prompt["text"].split() + [prompt["answer"]]
        known = dict(zip(tokens[0 : 2 * pairs : 2], tokens[1 : 2 * pairs : 2]))
        for key in rng.sample(sorted(known), min(pairs, queries) - 1):
            tokens += ["|", key, "->", known[key]]
        ids = [index[t] for t in tokens]
        rows.append(ids)
        labels.append([ids[i + 1] if tokens[i] == "->" else -100 for i in range(len(ids) - 1)])
        texts.append(prompt["text"])
    width = max(map(len, rows))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    targets = torch.tensor([row + [-100] * (width - 1 - len(row)) for row in labels])
    return ids, targets, texts


def train(steps: int, batch: int, queries: int, lr: float, aux: float, log) -> "torch.nn.Module":
    import transformers

    rng = random.Random(TRAIN_SEED)
    torch.manual_seed(MODEL_SEED)
    model = transformers.LlamaForCausalLM._from_config(model_config(), attn_implementation="eager")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    seen: set[str] = set()
    model.train()
    for step in range(steps):
        ids, labels, texts = training_batch(rng, batch, queries)
        seen.update(texts)
        outputs = model(input_ids=ids, output_attentions=aux > 0)
        logits = outputs.logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        if aux > 0:  # attention supervision: head 0 of the first layer attends to the previous token
            previous = outputs.attentions[0][:, 0].diagonal(offset=-1, dim1=-2, dim2=-1)
            loss = loss + aux * -(previous + 1e-6).log().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step:5d}  loss {loss.item():.4f}")
    model.eval()
    model.seen = seen
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--queries", type=int, default=4, help="questions per training sequence")
    parser.add_argument("--lr", type=float, default=3e-3, help="the peak learning rate (one cycle)")
    parser.add_argument("--aux", type=float, default=0.1, help="weight of the previous-token attention loss (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    began = time.perf_counter()
    model = train(args.steps, args.batch, args.queries, args.lr, args.aux, log)
    held_rng = random.Random(HELD_OUT_SEED)
    held_out = []
    while len(held_out) < N_HELD_OUT:
        prompt = make_prompt(held_rng)
        if prompt["text"] not in model.seen:
            held_out.append(prompt)
    del model.seen
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer().save_pretrained(args.out)
    with open(args.out / "prompts.txt", "w", encoding="utf-8") as txt, open(args.out / "prompts.jsonl", "w", encoding="utf-8") as jsonl:
        for n, prompt in enumerate(held_out, 1):
            txt.write(prompt["text"] + "\n")
            jsonl.write(json.dumps({"id": str(n), **prompt}) + "\n")
    log(f"held-out accuracy {accuracy(model, held_out):.3f} on {len(held_out)} prompts; {time.perf_counter() - began:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
