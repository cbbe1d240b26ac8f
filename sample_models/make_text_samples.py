"""Train and write the sample text classifiers (``text_sentiment/``): sentiment from planted lexicon words.

    python sample_models/make_text_samples.py             # writes sample_models/text_sentiment/
    python sample_models/make_text_samples.py --out DIR   # somewhere else

Three small models for ``lrp explain``'s text mode, each with a model spec: a bag of embeddings
(``lrpcli.architectures:TextBag``, composite ``epsilon``), a bidirectional LSTM (``TextLSTM``,
``epsilon``) and a two-block transformer encoder (``TextTransformer``, ``attnlrp``). They share
one word-level tokenizer (``tokenizer.json``, trained here with the ``tokenizers`` library).

The data is generated, so the evidence is known. Every sentence is made of template clauses
over neutral English words (nouns, determiners, prepositions and a few verbs, none of them in
the lexicon) with one to three *planted* sentiment words. The planted words are real English
words of the VADER lexicon (Hutto and Gilbert 2014, ``vader_lexicon.txt`` of the PyPI package
``vaderSentiment`` 3.3.2, MIT licence, (c) 2016 C.J. Hutto): a hand-picked list of common
words, kept where the lexicon's mean valence is at least 1.5 in absolute value and of the
expected sign. The label is the sign of the sum of the planted words' valences; sentences
whose sum is within 1.0 of zero (ties and near-ties) are dropped, and there is no negation, so
the task is learnable from the words alone and a good explanation puts its relevance on them.

Written: ``tokenizer.json``; ``{bag,lstm,transformer}.pt`` (float32 state dicts) and ``.yaml``
(specs); 200 of the 600 held-out texts as ``texts.txt`` (one per line), ``reviews.csv``
(``id,text,label``, labels ``negative``/``positive``) and ``planted.jsonl`` (per text its id, text, label
and planted words with their character spans ``[start, end)`` in the text and their valence).
Held-out ids are line numbers (1-200), as ``lrp explain`` numbers the lines of a .txt file.

Needs ``tokenizers`` and ``vaderSentiment`` (``pip install tokenizers vaderSentiment``; only its
lexicon file is read, so ``pip install --no-deps vaderSentiment`` is enough). Seeds are fixed and training
runs on one thread (``--threads``; the check at the end on two): a rerun writes byte-identical
files on the same machine. With two training threads the models are as good but not always
identical (one rerun of three gave a bag model that differed in the last bits, on a busy
machine). Takes about half a minute on an idle two-core machine. At the end the script reloads every spec as lrp does and
prints held-out accuracy and how often the top token by |relevance| is a planted word.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from lrpcli.sources.architectures import TextBag, TextLSTM, TextTransformer  # noqa: E402

NAME = "text_sentiment"
MAX_LENGTH = 64
N_TRAIN, N_HELD_OUT, N_SHIPPED = 6000, 600, 200
MIN_VALENCE, MIN_MARGIN = 1.5, 1.0
CLASSES = ["negative", "positive"]

# Candidate sentiment words; the script keeps those the lexicon scores |valence| >= 1.5 with this sign.
POSITIVE = """
admire adorable amazing applause appreciate awesome beautiful beloved benefit best better blessed bliss
brave bright brilliant calm caring celebrate charm charming cheer cheerful cherished clean clever comfort
comfortable compassion confident courage creative cute dear dedicated delicious delight delighted
delightful dignity easy elegant encourage energetic enjoy enjoyable enjoyed enthusiasm excellent excited
exciting fabulous faithful fantastic fascinating favorite festive fond fortunate free freedom friendly
friendship fun funny generous gentle gift glad glorious good gorgeous grace graceful gracious grand
grateful gratitude great greatest happiness happy harmony healthy heartfelt heaven helpful hero honest
honor hope hopeful hug ideal impressive improve improved innovative inspired inspiring integrity
interesting jolly joy joyful justice keen kind kindness laugh laughter liked lively love loved lovely
loving loyal luck lucky magnificent marvelous merry miracle neat nice optimistic paradise passion peace
peaceful perfect playful pleasant pleased pleasure popular positive praise precious pretty prize
promising proud radiant reassured recommend rejoice relaxed relaxing relief remarkable respect respected
reward rewarding rich romantic safe safety satisfied secure sincere smart smile smiling soothing sparkle
special splendid strength strong succeed success successful sunny sunshine super superb support
supportive sweet sympathy talented tender thank thankful thoughtful thrilled thrilling tranquil treasure
treasured triumph trust trusted useful valuable vibrant victory virtue warm warmth wealthy welcome
welcoming win winner winning wisdom wise wonderful worthy wow yay
""".split()
NEGATIVE = """
abandon abuse accident afraid agony alarm angry annoy annoyed annoying anxious arrogant awful bad badly
betray betrayed bitter blame boring broke broken brutal burden careless catastrophe chaos cheat cheated
clueless collapse complain complaint confused contempt cowardly crash crisis criticism crude cruel cry
crying damage damaged danger dangerous defeated defective depressed depressing despair desperate destroy
destroyed destruction difficult dirty disappoint disappointed disappointing disaster disastrous
discomfort disgust disgusting dishonest dislike dismal disorder distress disturbing doubt dread dreadful
dull dumb embarrassed embarrassing enemy error evil exhausted fail failed failure fake fault fear fearful
filthy flawed fool foolish fraud frightened frightening frustrated frustrating frustration fury gloomy
greedy grief grim gross guilty harm harmful harsh hate hated hateful helpless hopeless horrible horrific
horrified hostile hurt hurting ignorant ignore illness inadequate incompetent inferior injured injury
insecure insult insulting irritating jealous lame lazy liar lonely lose loser losing loss lousy mad mess
messy miserable misery mistake mock nasty negative neglect nightmare nonsense obnoxious offensive outrage
pain painful panic pathetic pitiful poison poor problem punish rage regret reject rejected rotten rude
ruin ruined sad sadly sadness scared scary selfish shame shameful shocked sick sorrow stink stolen stress
stressful struggling stupid suffer suffering suspicious terrible terribly terrified threat tired tragic
trouble troubled ugly unfair unfortunate unhappy unpleasant upset useless vile violent waste wasted weak
weakness weep wicked worried worry worse worst wreck wrong
""".split()

# Neutral nouns for the templates' {n} slots; none of them (nor any template word) is in the lexicon.
NOUNS = """
table chair window door garden kitchen morning evening afternoon train station book letter street city
river bridge market shop office room house car bus road park tree hill village town coffee tea bread
lunch dinner breakfast phone screen camera box bag shirt jacket shoe hat paper pencil desk lamp wall floor
roof stairs corner minute hour week month year weekend monday tuesday friday teacher driver neighbour
cousin brother sister uncle manager clerk waiter guest visitor crowd class lesson meeting report ticket
seat menu plate cup bottle glass water milk sugar salt rice soup engine wheel radio movie film song album
episode chapter page picture photo map list note package delivery order hotel airport flight beach lake
island mountain forest field farm kettle oven fridge sofa carpet curtain garage bicycle tram ferry harbour
museum library school campus laptop keyboard printer battery cable charger sandwich pizza pasta salad
""".split()

# Clauses with one planted word ({w}) and clauses without; {n} is a neutral noun.
PLANTED_CLAUSES = [
    "the {n} was {w}",
    "the {n} near the {n} seemed {w}",
    "someone wrote {w} on the {n}",
    "our {n} looked {w} after the {n}",
    "my {n} at the {n} was {w}",
    "one word for the {n} : {w}",
    "{w} , said the {n} about the {n}",
    "the {n} in the {n} sounded {w}",
    "their {n} became {w} during the {n}",
    "this {n} is {w}",
    "we called the {n} {w}",
    "a {w} {n} by the {n}",
    "the {n} from the {n} felt {w}",
    "her {n} was {w} again",
]
FILLER_CLAUSES = [
    "we took the {n} to the {n}",
    "the {n} was on the {n}",
    "later we went to the {n}",
    "my {n} and her {n} were there",
    "it was a {n} in the {n}",
    "then the {n} came with a {n}",
    "his {n} stood behind the {n}",
    "every {n} had a {n}",
    "there were two {n} near the {n}",
    "yesterday the {n} was at the {n}",
]
JOINS = [", ", " and ", " ; ", ", then "]


def load_lexicon() -> dict[str, float]:
    """word -> mean valence (-4..4) from vaderSentiment's vader_lexicon.txt (read as a file, no code run)."""
    import importlib.resources

    try:
        text = importlib.resources.files("vaderSentiment").joinpath("vader_lexicon.txt").read_text(encoding="utf-8")
    except ModuleNotFoundError as exc:
        raise SystemExit("needs the VADER lexicon: pip install --no-deps vaderSentiment (MIT licence)") from exc
    lexicon = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            lexicon[parts[0]] = float(parts[1])
    return lexicon


def sentiment_words(lexicon: dict[str, float]) -> dict[str, float]:
    words = {w: lexicon[w] for w in POSITIVE if lexicon.get(w, 0.0) >= MIN_VALENCE}
    words.update({w: lexicon[w] for w in NEGATIVE if lexicon.get(w, 0.0) <= -MIN_VALENCE})
    template_words = {t for clause in PLANTED_CLAUSES + FILLER_CLAUSES + JOINS for t in clause.split() if not t.startswith("{")}
    clash = sorted(w for w in set(NOUNS) | template_words if w in lexicon)
    assert not clash, f"neutral words that the lexicon scores: {clash}"
    return words


def make_text(rng: random.Random, words: list[str], valence: dict[str, float]) -> tuple[str, list[dict], float]:
    """One sentence: 1-3 planted clauses and 0-2 filler clauses in random order. Returns the text, its
    planted words (word, character span, valence) and the sum of their valences."""
    planted = [rng.choice(words) for _ in range(rng.choice((1, 2, 3)))]
    clauses = [(rng.choice(PLANTED_CLAUSES), w) for w in planted] + [(rng.choice(FILLER_CLAUSES), None) for _ in range(rng.choice((0, 1, 1, 2)))]
    rng.shuffle(clauses)
    text, spans = "", []
    for index, (clause, word) in enumerate(clauses):
        if index:
            text += rng.choice(JOINS)
        for piece_index, piece in enumerate(clause.split(" ")):
            if piece_index:
                text += " "
            if piece == "{w}":
                spans.append({"word": word, "start": len(text), "end": len(text) + len(word), "valence": valence[word]})
                text += word
            elif piece == "{n}":
                text += rng.choice(NOUNS)
            else:
                text += piece
    text = text.replace(" ,", ",").replace(" ;", ";").replace(" :", ":")
    # the replacements shift later spans; recompute them from the word positions
    spans = _respan(text, spans)
    text = text[0].upper() + text[1:] + "."
    return text, spans, sum(s["valence"] for s in spans)


def _respan(text: str, spans: list[dict]) -> list[dict]:
    """Find each planted word again, in order, as a whole word of the final text."""
    fixed, cursor = [], 0
    for span in spans:
        word = span["word"]
        while True:
            start = text.index(word, cursor)
            end = start + len(word)
            before = text[start - 1] if start else " "
            after = text[end] if end < len(text) else " "
            if not before.isalnum() and not after.isalnum():
                break
            cursor = start + 1
        fixed.append({**span, "start": start, "end": end})
        cursor = end
    return fixed


def make_data(valence: dict[str, float], count: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    rng = random.Random(seed)
    words = sorted(valence)
    rows: list[dict] = []
    seen = set(exclude)
    while len(rows) < count:
        text, spans, total = make_text(rng, words, valence)
        if abs(total) < MIN_MARGIN or text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "label": int(total > 0), "planted": spans})
    return rows


def train_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"], min_frequency=1))
    assert tokenizer.token_to_id("[PAD]") == 0 and tokenizer.token_to_id("[UNK]") == 1
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return [list(e.ids) for e in tokenizer.encode_batch(texts)]


def pad(rows: list[list[int]], length: int | None = None) -> torch.Tensor:
    length = length or max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r[:length])
    return ids


def train(model: nn.Module, ids: list[list[int]], labels: torch.Tensor, *, epochs: int, lr: float, batch: int = 64, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(ids) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(ids), generator=generator).tolist()
        total = 0.0
        for start in range(0, len(order), batch):
            chosen = order[start : start + batch]
            x = pad([ids[i] for i in chosen])
            loss = nn.functional.cross_entropy(model(x), labels[chosen])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(chosen)
        print(f"    epoch {epoch + 1}/{epochs}: loss {total / len(ids):.4f}", flush=True)
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, ids: list[list[int]], labels: torch.Tensor) -> float:
    return (model(pad(ids)).argmax(1) == labels).float().mean().item()


MODELS = {
    # file stem: (class, arch kwargs beyond vocab_size, composite, epochs, lr, description)
    "bag": (TextBag, {"dim": 32, "num_classes": 2}, "epsilon", 12, 1e-2, "bag-of-embeddings model (mean of the token embeddings, linear)"),
    "lstm": (TextLSTM, {"dim": 32, "hidden": 32, "num_classes": 2, "bidirectional": True}, "epsilon", 6, 5e-3, "bidirectional LSTM (mean of its outputs over the tokens, linear)"),
    "transformer": (
        TextTransformer,
        {"dim": 32, "heads": 2, "layers": 2, "max_length": MAX_LENGTH, "num_classes": 2},
        "attnlrp",
        14,
        2e-3,
        "transformer encoder (2 pre-norm blocks of 2-head attention, masked mean pooling)",
    ),
}


def write_spec(path: Path, stem: str, arch: str, kwargs: dict, composite: str, description: str) -> None:
    flow = ", ".join(f"{k}: {json.dumps(v)}" for k, v in kwargs.items())
    path.write_text(
        f"# {NAME}: the {description}\n"
        "# Paths are relative to this file. Regenerate: python sample_models/make_text_samples.py\n"
        f"model: {stem}.pt\n"
        f"arch: lrpcli.architectures:{arch}  # MODULE:CALLABLE that builds the network\n"
        f"arch_kwargs: {{{flow}}}  # keyword arguments for arch\n"
        "input:\n"
        "  kind: text\n"
        "  tokenizer: tokenizer.json  # word-level, lowercase; [PAD] = 0, [UNK] = 1\n"
        f"  max_length: {MAX_LENGTH}\n"
        f"classes: [{', '.join(CLASSES)}]\n"
        f"composite: {composite}        # the default composite for this model\n"
    )


def write_held_out(folder: Path, rows: list[dict]) -> None:
    with open(folder / "texts.txt", "w", encoding="utf-8") as handle:
        handle.writelines(row["text"] + "\n" for row in rows)
    with open(folder / "reviews.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "text", "label"])
        for number, row in enumerate(rows, 1):
            writer.writerow([number, row["text"], CLASSES[row["label"]]])
    with open(folder / "planted.jsonl", "w", encoding="utf-8") as handle:
        for number, row in enumerate(rows, 1):
            record = {"id": str(number), "text": row["text"], "label": CLASSES[row["label"]], "planted": row["planted"]}
            handle.write(json.dumps(record) + "\n")


def relevance_check(folder: Path, stem: str) -> dict[str, float]:
    """Load the spec as lrp does, explain the shipped held-out texts for the predicted class, and measure
    accuracy, how often the top token by |relevance| (and by signed relevance) is a planted word, the
    chance of that (mean share of planted tokens per text), and the largest |relevance| on padding."""
    from tokenizers import Tokenizer

    from lrpcli import explain
    from lrpcli.sources.files import load_spec, load_spec_model

    spec = load_spec(folder / f"{stem}.yaml")
    model = load_spec_model(spec)
    tokenizer = Tokenizer.from_file(spec.input["tokenizer"])
    tokenizer.no_padding()
    rows = [json.loads(line) for line in (folder / "planted.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = (folder / "texts.txt").read_text(encoding="utf-8").splitlines()
    encodings = tokenizer.encode_batch(texts)
    ids = pad([list(e.ids) for e in encodings])
    labels = torch.tensor([CLASSES.index(r["label"]) for r in rows])
    result = explain(model, ids, spec.composite)
    hits_abs = hits_signed = 0
    chance = 0.0
    for row, encoding, relevance in zip(rows, encodings, result.relevance):
        n = len(encoding.ids)
        planted = [any(s < p["end"] and p["start"] < e for p in row["planted"]) for s, e in encoding.offsets]
        hits_abs += planted[int(relevance[:n].abs().argmax())]
        hits_signed += planted[int(relevance[:n].argmax())]
        chance += sum(planted) / n
    return {
        "accuracy": (result.outputs.argmax(1) == labels).float().mean().item(),
        "top1_abs": hits_abs / len(rows),
        "top1_signed": hits_signed / len(rows),
        "chance": chance / len(rows),
        "pad_max": result.relevance[ids == 0].abs().max().item() if (ids == 0).any() else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: next to this script)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1: reruns write identical files)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    folder = args.out / NAME
    folder.mkdir(parents=True, exist_ok=True)

    valence = sentiment_words(load_lexicon())
    n_pos = sum(v > 0 for v in valence.values())
    print(f"{NAME}: {n_pos} positive and {len(valence) - n_pos} negative VADER words (|valence| >= {MIN_VALENCE})", flush=True)
    training = make_data(valence, N_TRAIN, seed=0)
    held_out = make_data(valence, N_HELD_OUT, seed=1, exclude={r["text"] for r in training})
    print(f"  {len(training)} training texts ({sum(r['label'] for r in training)} positive), {len(held_out)} held out", flush=True)

    tokenizer = train_tokenizer([r["text"] for r in training])
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    vocab_size = tokenizer.get_vocab_size()
    print(f"  tokenizer: {vocab_size} tokens", flush=True)
    train_ids, held_ids = encode(tokenizer, [r["text"] for r in training]), encode(tokenizer, [r["text"] for r in held_out])
    assert max(len(r) for r in train_ids + held_ids) <= MAX_LENGTH
    train_y, held_y = torch.tensor([r["label"] for r in training]), torch.tensor([r["label"] for r in held_out])
    write_held_out(folder, held_out[:N_SHIPPED])

    for stem, (cls, kwargs, composite, epochs, lr, description) in MODELS.items():
        begun = time.perf_counter()
        kwargs = {"vocab_size": vocab_size, **kwargs}
        print(f"  {stem}: {cls.__name__}({kwargs}), {epochs} epochs, Adam lr {lr}", flush=True)
        torch.manual_seed(0)
        model = cls(**kwargs)
        train(model, train_ids, train_y, epochs=epochs, lr=lr)
        acc = accuracy(model, held_ids, held_y)
        torch.save({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, folder / f"{stem}.pt")
        write_spec(folder / f"{stem}.yaml", stem, cls.__name__, kwargs, composite, description)
        print(f"    held-out accuracy {acc:.4f} ({len(held_out)} texts), {time.perf_counter() - begun:.0f} s", flush=True)

    torch.set_num_threads(2)
    print(f"  check on the {N_SHIPPED} shipped held-out texts (spec reloaded, explain() for the predicted class):", flush=True)
    for stem, (_, _, composite, *_rest) in MODELS.items():
        m = relevance_check(folder, stem)
        print(
            f"    {stem:12s} {composite:8s} accuracy {m['accuracy']:.3f}  top-1 |R| on a planted word {m['top1_abs']:.3f}"
            f"  (top-1 signed R {m['top1_signed']:.3f}; chance {m['chance']:.3f})  max |R| on padding {m['pad_max']:.1e}",
            flush=True,
        )
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"  wrote {folder} ({size / 1e6:.2f} MB) in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
