"""A language model's generation explained token by token (issue 28 item 1): ``lrp explain LM PROMPTS
--max-new-tokens N`` on Hugging Face causal-LM folders (Llama, GPT-2) saved here from tiny random configs.

Independent references: the greedy tokens are transformers' own ``generate(do_sample=False)``; each generated
token's relevance is ``explain()`` on a user's last-position wrapper fed exactly the prefix that predicted it
(the prompt and the tokens generated before), a separate capture and a one-hot target instead of the batched
seeds of one padded sequence.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from cli_support import lrp  # noqa: E402

WORDS = "the film was good bad great boring not very".split()
PROMPTS = ["the film was", "not very good bad boring"]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[EOS]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]", model_max_length=32)


def _model(family: str):
    torch.manual_seed(3)
    size = 4 + len(WORDS)
    if family == "llama":
        config = transformers.LlamaConfig(
            vocab_size=size, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, eos_token_id=3,
        )
        return transformers.LlamaForCausalLM(config).eval()
    config = transformers.GPT2Config(vocab_size=size, n_embd=16, n_layer=2, n_head=2, n_positions=64, pad_token_id=0, eos_token_id=3)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def folder(request, tmp_path_factory):
    model = _model(request.param)
    path = tmp_path_factory.mktemp("lm") / request.param
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    prompts = path.parent / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path, model, prompts


class _LastToken(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1]


def _generate(folder, prompts, out, *extra):
    run = lrp("explain", folder, prompts, "--max-new-tokens", "3", "--dtype", "float64", "-q", *extra, out=out)
    assert run.code == 0, run.describe()
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_each_generated_token_is_explained_over_its_own_prefix(folder, tmp_path):
    from lrpcli import explain

    path, model, prompts = folder
    rows = _generate(path, prompts, tmp_path / "g.jsonl")
    tokenizer = _tokenizer()
    assert [row["text"] for row in rows] == PROMPTS
    checked = 0
    for row in rows:
        encoded = tokenizer(row["text"], return_tensors="pt", return_token_type_ids=False)
        prompt = encoded["input_ids"][0].tolist()
        assert row["prompt_tokens"] == tokenizer.convert_ids_to_tokens(prompt)
        greedy = model.generate(**encoded, max_new_tokens=3, do_sample=False, pad_token_id=0)[0, len(prompt) :].tolist()
        assert [g["id"] for g in row["generated"]] == greedy  # transformers' own greedy decoding (it stops at [EOS] too)
        assert row["stopped"] == (greedy[-1] == 3)
        sequence = prompt + greedy
        if row is not rows[0]:
            continue  # (each prefix is a capture of its own: the first prompt's tokens are enough to compare)
        for k, generated in enumerate(row["generated"]):
            prefix = torch.tensor([sequence[: len(prompt) + k]])
            expected = explain(_LastToken(model.double()).eval(), prefix, "attnlrp", target=generated["id"])
            logits = expected.outputs[0]
            assert generated["position"] == len(prompt) + k and generated["token"] == tokenizer.convert_ids_to_tokens(generated["id"])
            # (1e-6: Llama computes its rotary angles in float32 whatever the model's dtype; the CLI's float64 graph
            # computes them in float64)
            assert generated["logit"] == pytest.approx(float(logits[generated["id"]]), rel=1e-6)
            assert generated["probability"] == pytest.approx(float(torch.softmax(logits, 0)[generated["id"]]), rel=1e-6)
            got = torch.tensor(generated["relevance"], dtype=torch.float64)
            assert got.shape == (len(prompt) + k,)  # one number per token before it, prompt first
            torch.testing.assert_close(got, expected.relevance[0], rtol=0, atol=2e-5 * float(expected.relevance.abs().max()))  # (the rotary angles again)
            words = [w["relevance"] for w in generated["words"]]
            assert words == pytest.approx(got[: len(prompt)].tolist())  # word-level merges of the prompt part
            checked += 1
        model.float()
    assert checked >= 2


def test_batched_seeds_equal_one_walk_per_token_and_a_next_token_model(folder, tmp_path):
    if folder[0].name != "llama":
        pytest.skip("the walk does not depend on the family: Llama alone keeps the suite short")
    """The N seeds walked together (the padded sequence repeated) equal one seed per walk, and equal a model
    that returns only the next token's logits (explained prefix by prefix)."""
    from lrpcli.data.text import TextRecord, TextTokenizer
    from lrpcli.engine.explainer import Explainer
    from lrpcli.runs.generate import explain_generations

    path, model, _ = folder
    tokenizer = TextTokenizer(path / "tokenizer.json", 32)
    records = [TextRecord(1, "1", PROMPTS[1])]

    def run(module, **options):
        rows = []

        class Keep:
            def write(self, batch):
                rows.extend(batch)

        explain_generations(Explainer(module, "attnlrp"), records, tokenizer, [Keep()], max_new_tokens=2, dtype="float64", **options)
        return rows[0]["generated"]

    from lrpcli.sources.hf import Logits

    sequence_model = Logits(model).double().eval()
    together = run(sequence_model, seeds_per_walk=4)
    one_by_one = run(sequence_model, seeds_per_walk=1)
    next_only = run(_LastToken(model).double().eval())
    model.float()
    assert [g["id"] for g in together] == [g["id"] for g in one_by_one] == [g["id"] for g in next_only]
    for a, b, c in zip(together, one_by_one, next_only):
        scale = max(abs(v) for v in a["relevance"])
        assert a["relevance"] == pytest.approx(b["relevance"], abs=1e-12 * scale)
        assert a["relevance"] == pytest.approx(c["relevance"], abs=1e-9 * scale)


def test_the_graph_cache_holds_the_generation_graph(folder, tmp_path, monkeypatch):
    """A second run reads the captured graph from the cache (a Llama graph holds views of one tensor, which
    safetensors refuses to write as they are) and gives the same lines, with no warning."""
    if folder[0].name != "llama":
        pytest.skip("Llama's graph is the one with shared tensors")
    monkeypatch.setenv("LRP_CACHE_DIR", str(tmp_path / "cache"))
    path, _, prompts = folder
    first = lrp("explain", path, prompts, "--max-new-tokens", "2", out=tmp_path / "a.jsonl")
    second = lrp("explain", path, prompts, "--max-new-tokens", "2", out=tmp_path / "b.jsonl")
    assert first.code == second.code == 0, first.describe() + second.describe()
    assert "warning" not in first.stderr + second.stderr
    assert any((tmp_path / "cache").rglob("*.safetensors"))
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_generation_refuses_what_does_not_apply(folder, tmp_path):
    path, _, prompts = folder
    for extra, words in ((("--target", "good"), "--target"), (("--top-k", "2"), "--top-k"), (("--format", "csv"), "JSON lines")):
        run = lrp("explain", path, prompts, "--max-new-tokens", "2", *extra, out=tmp_path / "x.jsonl")
        assert run.code == 2 and words in run.stderr, run.describe()
    shapes = Path(__file__).resolve().parents[1] / "sample_models" / "shapes_minivgg"
    run = lrp("explain", shapes / "model.yaml", shapes / "images", "--max-new-tokens", "2", out=tmp_path / "out")
    assert run.code == 2 and "--max-new-tokens applies to texts" in run.stderr, run.describe()


# --------------------------------------------------------------------------- a given answer, a contrast, a context (item 2, 3)


def _only_llama(folder):
    if folder[0].name != "llama":
        pytest.skip("the options do not depend on the family: Llama alone keeps the suite short")


def _qa(tmp_path, rows):
    import csv

    path = tmp_path / "qa.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_continuation_equal_to_the_greedy_answer_is_explained_as_the_generation(folder, tmp_path):
    _only_llama(folder)
    path, _, prompts = folder
    generated = _generate(path, prompts, tmp_path / "g.jsonl")
    answers = [" ".join(g["token"] for g in row["generated"]) for row in generated]
    qa = _qa(tmp_path, [{"prompt": p, "answer": a} for p, a in zip(PROMPTS, answers)])
    forced = _generate(path, qa, tmp_path / "f.jsonl", "--text-col", "prompt", "--continuation-col", "answer")
    for g_row, f_row in zip(generated, forced):
        assert f_row["continuation"] is True and g_row["continuation"] is False
        assert [g["id"] for g in f_row["generated"]] == [g["id"] for g in g_row["generated"]]
        for g, f in zip(g_row["generated"], f_row["generated"]):
            assert f["greedy"] == f["id"]  # the model's own first choice, as it was when generated
            assert f["logit"] == pytest.approx(g["logit"], rel=1e-12)
            assert f["relevance"] == pytest.approx(g["relevance"], rel=1e-9, abs=1e-15)


def test_a_forced_answer_that_is_not_greedy_is_explained_on_its_own_prefix(folder, tmp_path):
    from lrpcli import explain

    _only_llama(folder)
    path, model, _ = folder
    qa = _qa(tmp_path, [{"prompt": "the film was", "answer": "not boring"}])
    row = _generate(path, qa, tmp_path / "f.jsonl", "--text-col", "prompt", "--continuation-col", "answer")[0]
    tokenizer = _tokenizer()
    prompt = tokenizer("the film was", return_token_type_ids=False)["input_ids"]
    answer = tokenizer.convert_tokens_to_ids(["not", "boring"])
    assert [g["id"] for g in row["generated"]] == answer
    second = row["generated"][1]  # predicted from "the film was not": a prefix the model did not choose itself
    expected = explain(_LastToken(model.double()).eval(), torch.tensor([prompt + answer[:1]]), "attnlrp", target=answer[1])
    model.float()
    assert second["greedy"] == int(expected.outputs[0].argmax())
    got = torch.tensor(second["relevance"], dtype=torch.float64)
    torch.testing.assert_close(got, expected.relevance[0], rtol=0, atol=2e-5 * float(expected.relevance.abs().max()))


class _DifferenceHead(torch.nn.Module):
    """A Llama whose head outputs z_t - z_c at the last position: one linear unit with weight W_t - W_c."""

    def __init__(self, model, token, against):
        super().__init__()
        self.base = model.model
        self.head = torch.nn.Linear(model.lm_head.in_features, 1, bias=False).to(model.lm_head.weight.dtype)
        with torch.no_grad():
            self.head.weight.copy_(model.lm_head.weight[token] - model.lm_head.weight[against])

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, -1])


def test_contrast_token_equals_a_head_that_outputs_the_logit_difference(folder, tmp_path):
    from lrpcli import explain

    _only_llama(folder)
    path, model, prompts = folder
    run = lrp("explain", path, prompts, "--max-new-tokens", "2", "--dtype", "float64", "-q", "--contrast", "boring", "-p", "epsilon=1e-12", out=tmp_path / "c.jsonl")
    assert run.code == 0, run.describe()
    row = json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])
    assert row["contrast"] == "boring"
    tokenizer = _tokenizer()
    prompt = tokenizer(PROMPTS[0], return_token_type_ids=False)["input_ids"]
    against = tokenizer.convert_tokens_to_ids("boring")
    first = row["generated"][0]
    head = _DifferenceHead(model.double(), first["id"], against).eval()
    expected = explain(head, torch.tensor([prompt]), "attnlrp", target=0, params={"epsilon": 1e-12})
    model.float()
    got = torch.tensor(first["relevance"], dtype=torch.float64)
    torch.testing.assert_close(got, expected.relevance[0], rtol=0, atol=1e-4 * float(expected.relevance.abs().max()))
    bad = lrp("explain", path, prompts, "--max-new-tokens", "1", "--contrast", "wonderful", out=tmp_path / "x.jsonl")
    assert bad.code == 2 and "--contrast 'wonderful'" in bad.stderr, bad.describe()


def test_context_relevance_is_summed_per_passage_and_sentence(folder, tmp_path):
    _only_llama(folder)
    path, _, _ = folder
    context = "the film was good. not very boring.\n\nbad great film."
    qa = _qa(tmp_path, [{"q": "the film was", "ctx": context}])
    row = _generate(path, qa, tmp_path / "ctx.jsonl", "--text-col", "q", "--context-col", "ctx")[0]
    assert row["context"] == context and row["prompt_tokens"][:5] == ["the", "film", "was", "good", "[UNK]"]
    for generated in row["generated"]:
        passages = generated["context"]
        assert [p["text"] for p in passages] == ["the film was good. not very boring.", "bad great film."]
        assert [s["text"] for s in passages[0]["sentences"]] == ["the film was good.", "not very boring."]
        words = generated["words"]
        for passage in passages:  # a passage's relevance: the words inside its span (no word crosses a passage)
            inside = sum(w["relevance"] for w in words if passage["start"] <= w["start"] < passage["end"])
            assert passage["relevance"] == pytest.approx(inside, abs=1e-12)
            assert passage["relevance"] == pytest.approx(sum(s["relevance"] for s in passage["sentences"]), abs=1e-12)
        prompt_part = sum(w["relevance"] for w in words if w["start"] >= len(context))
        total = sum(p["relevance"] for p in passages) + prompt_part
        prompt_length = len(row["prompt_tokens"])  # (the tokens generated before this one are no words of the text)
        assert total == pytest.approx(sum(generated["relevance"][:prompt_length]), abs=1e-9)  # every token counted once
    txt = lrp("explain", path, folder[2], "--continuation-col", "answer", out=tmp_path / "t.jsonl")
    assert txt.code != 0 and "CSV or JSON-lines" in txt.stderr, txt.describe()


def test_a_float64_sliding_window_model_generates_what_transformers_generates(tmp_path):
    """Gemma 3 with a window of 8 in float64: the pads after the prompt were masked, so a pad whose window held only
    pads had every key masked (an all -inf softmax row: NaN), and 0 * NaN in the next layer reached the real
    positions: lrp generated [PAD] with NaN logits. The pads are attended to now (a causal model's real positions
    never see them): the tokens are transformers' greedy ones, the logits finite."""
    import math

    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from lrpcli.data.text import TextRecord, TextTokenizer
    from lrpcli.engine.explainer import Explainer
    from lrpcli.runs.generate import explain_generations
    from lrpcli.sources.hf import Logits

    words = "the film was good bad great boring not very".split()
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[EOS]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(vocab_size=13, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8, sliding_window=8, pad_token_id=0,
                                           eos_token_id=3, bos_token_id=2, attn_implementation="eager")
    model = transformers.Gemma3ForCausalLM(config).double().eval()
    rows = []

    class Keep:
        def write(self, batch):
            rows.extend(batch)

    explain_generations(Explainer(Logits(model), "attnlrp"), [TextRecord(1, "1", "the film was not very")],
                        TextTokenizer(tmp_path / "tokenizer.json", 32), [Keep()], max_new_tokens=4, dtype="float64")
    expected = model.generate(torch.tensor([[4, 5, 6, 11, 12]]), max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 5:]
    assert [g["id"] for g in rows[0]["generated"]] == expected.tolist()
    assert all(math.isfinite(g["logit"]) for g in rows[0]["generated"])
