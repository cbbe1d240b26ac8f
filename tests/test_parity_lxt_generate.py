"""Parity with LXT 2.1 per generated token (issue 28): lrpcli's generation path against AttnLRP's reference.

For a tiny random causal LM of each family LXT 2.1 patches (``lxt.efficient.models``: Llama, Qwen2, Qwen3,
Gemma 3; it has no Mistral, Gemma 1 or Gemma 2 preset, so those are not compared), float64, eval, eager
attention:

1. lrpcli's generation (``lrpcli.runs.generate.explain_generations``, what ``lrp explain --max-new-tokens``
   runs) greedily generates N tokens; transformers' ``generate(do_sample=False)`` and LXT's own argmax give
   the same ids.
2. For each generated token, LXT's efficient AttnLRP in its documented recipe (``monkey_patch`` the modeling
   module with ``attnLRP``, forward ``inputs_embeds`` that require grad on the token's prefix, backward the
   token's logit, ``R = (inputs_embeds * grad).sum(-1)``) equals the JSON row's ``relevance`` list to 1e-7 of
   max |R|. Conventions set equal on both sides: lrpcli's attnlrp at ``epsilon = stabilizer = 0`` (LXT's
   efficient mode is the epsilon -> 0 limit; lrpcli's default 1e-6 moves R by ~1e-4 of max |R|); LXT's
   ``logit.backward()`` (a seed of 1) is lrpcli's ``init="value"`` (LXT's README's ``logit.backward(logit)``
   would scale every relevance by the logit once more).
3. The CLI end to end: ``lrp explain FOLDER prompts.txt --max-new-tokens 3`` on a float32 Llama folder saved
   with save_pretrained and a tokenizer gives LXT's relevance per token.

Float64 throughout. transformers' float64 Llama-family models still compute two things in float32: RMSNorm
(``hidden_states.to(torch.float32)``, kept by LXT's ``rms_norm_forward``) and the eager softmax
(``softmax(..., dtype=torch.float32)``); the backward passes through both, so on transformers' code as it is
LXT's and lrpcli's relevance agree only to float32 precision (measured 2.4e-8 .. 3.4e-7 of max |R| on these
Llama/Qwen models; Gemma 3 in float64 then decodes NaN on lrpcli's right-padded buffer, see model_config). Both sides
here run the same float64 versions of those two functions (:func:`float64_norm_and_softmax`; LXT's RMSNorm
rule, the variance held constant, written out without its cast: :func:`lxt_rms_norm_float64`). The rotary
angles stay as transformers computes them (float32; forward only, no relevance passes there); lrpcli's
graph of a float32 folder explained in float64 computes exactly that model (measured: logits equal, 0.0).
Measured max |lrpcli - LXT| / max |R_LXT| = 8e-12 .. 8e-9 over the 19 tokens, LXT's identity-rule stabiliser
``out / (x + 1e-10)`` on SiLU/GELU; lrpcli's cp_lrp misses by 0.41 .. 1.8 (the sharpness check). Seen
failing: lrpcli's epsilon 1e-7 (5.7e-7 of max |R|), the CLI's default 1e-6 (1.4e-5), LXT seeded with the logit,
one LXT weight moved by 1e-3, LXT's own float32 RMSNorm on one side (the logits differ by 1.4e-7), a boosted
lm_head row on LXT's side (the ids).

LXT patches transformers process-wide, so it runs in a process of its own: this file run as a script
(``python tests/test_parity_lxt_generate.py CASE_DIR ...``) rebuilds each model from its config and state dict,
generates greedily itself and writes, per token, the id, the logit and the relevance (``lxt.json``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
D64 = torch.float64  # (torch.tensor of a list of floats is float32)
EXACT = {"epsilon": 0.0, "stabilizer": 0.0}  # LXT's efficient mode: the epsilon -> 0 limit
RTOL = 1e-7  # of max |R_LXT|
SHARP = 1e-3  # lrpcli's cp_lrp misses LXT's AttnLRP by more than this, relative
N = 4  # generated tokens (the Python API); the CLI generates 3
WORDS = "the film was good bad great boring not very".split()
PROMPT = "the film was not very"

#: family -> (config class, model class, modeling module, LXT 2.1 module under lxt.efficient.models)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", "transformers.models.llama.modeling_llama", "llama"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "transformers.models.qwen2.modeling_qwen2", "qwen2"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "transformers.models.qwen3.modeling_qwen3", "qwen3"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", "transformers.models.gemma3.modeling_gemma3", "gemma3"),
}


# --------------------------------------------------------------------------- models (both processes)


def model_config(family: str) -> dict[str, Any]:
    """A tiny config (JSON-able), weights of order 0.3 so that attention is not uniform and logits not ~0."""
    config = dict(vocab_size=4 + len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                  initializer_range=0.3)
    if family in ("qwen3", "gemma3"):
        config["head_dim"] = 8
    if family == "gemma3":
        # a window of 8 shortens the last tokens' view (prompt 5 + 4 generated). lrpcli decodes on one buffer padded
        # to 16: a padded query whose window holds only pads has every key masked, and transformers' own float64 eager
        # attention (its softmax in float32 turns float64's mask value into -inf) gives NaN there, which reaches the
        # real positions; the float64 softmax below keeps it finite (lrpcli then decodes [PAD]s: reported, issue 28)
        config.update(query_pre_attn_scalar=8, sliding_window=8)
    return config


def build_model(family: str, config: dict[str, Any]):
    import transformers

    config_class, model_class, _, _ = FAMILIES[family]
    made = getattr(transformers, config_class)(**config)
    made._attn_implementation = "eager"
    torch.manual_seed(0)  # the weights come from the state dict; this only makes the build repeatable
    return getattr(transformers, model_class)(made).double().eval()


def _eager_attention_float64(repeat_kv):
    def eager_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
        """transformers' eager attention (no softcap, no dropout here), its softmax in the input's dtype, not float32."""
        assert softcap is None
        key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
        scores = torch.matmul(query, key.transpose(2, 3)) * (module.head_dim**-0.5 if scaling is None else scaling)
        if attention_mask is not None:
            scores = scores + attention_mask[:, :, :, : key.shape[-2]]
        weights = torch.softmax(scores, dim=-1)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights

    return eager_attention_forward


def _rms_norm_float64(self, hidden_states):
    """transformers' Llama/Qwen RMSNorm without its float32 cast."""
    return self.weight * (hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _gemma_rms_norm_float64(self, x):
    """transformers' Gemma 3 RMSNorm (``_norm(x) * (1 + weight)``) without its float32 casts."""
    return self._norm(x) * (1.0 + self.weight)


def lxt_rms_norm_float64(self, hidden_states):
    """LXT 2.1's ``rms_norm_forward`` (lxt/efficient/patches.py: the identity rule, 1/rms held constant by
    ``stop_gradient``) without its ``.to(torch.float32)`` and back."""
    from lxt.efficient.rules import stop_gradient

    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * stop_gradient(torch.rsqrt(variance + self.variance_epsilon)))


def float64_norm_and_softmax(family: str, setattr=setattr) -> None:
    """Replace the modeling module's RMSNorm forward and eager attention with their float64 versions
    (``setattr``: pytest's ``monkeypatch.setattr`` in the pytest process, so that they come back)."""
    import importlib

    module = importlib.import_module(FAMILIES[family][2])
    norm = next(getattr(module, name) for name in dir(module) if name.endswith("RMSNorm"))
    setattr(norm, "forward", _gemma_rms_norm_float64 if family == "gemma3" else _rms_norm_float64)
    setattr(module, "eager_attention_forward", _eager_attention_float64(module.repeat_kv))


def save_case(directory: Path, family: str, model, prompt: list[int], count: int, stops: list[int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    case = {"family": family, "config": model_config(family), "prompt": prompt, "count": count, "stops": stops}
    (directory / "case.json").write_text(json.dumps(case))
    torch.save({k: v.detach().double().clone() for k, v in model.state_dict().items()}, directory / "state.pt")
    return directory


# --------------------------------------------------------------------------- the LXT process


def _lxt_case(directory: Path) -> None:
    """Greedy generation with LXT's patched model, each token's relevance by LXT's recipe."""
    case = json.loads((directory / "case.json").read_text())
    model = build_model(case["family"], case["config"])
    model.load_state_dict(torch.load(directory / "state.pt"))
    ids, out = list(case["prompt"]), []
    for _ in range(case["count"]):
        embeds = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, use_cache=False).logits[0, -1]
        token = int(logits.argmax())
        logits[token].backward()  # a seed of 1: R at the output is the logit (lrpcli's init="value")
        out.append({"id": token, "logit": float(logits[token]), "relevance": (embeds * embeds.grad).sum(-1)[0].tolist()})
        ids.append(token)
        if token in case["stops"]:
            break
    (directory / "lxt.json").write_text(json.dumps(out))


def main(folders: list[str]) -> int:
    import importlib

    sys.path.insert(0, str(HERE))
    from lxt_support import NOT_IMPORTABLE, _import_lxt

    try:
        efficient = _import_lxt()
    except ImportError as error:
        print(f"{type(error).__name__}: {error}")
        return NOT_IMPORTABLE
    torch.set_num_threads(1)
    cases = [Path(folder) for folder in folders]
    for family in sorted({json.loads((folder / "case.json").read_text())["family"] for folder in cases}):
        float64_norm_and_softmax(family)  # first: LXT wraps the float64 eager attention
        module = importlib.import_module(FAMILIES[family][2])
        efficient.monkey_patch(module, importlib.import_module(f"lxt.efficient.models.{FAMILIES[family][3]}").attnLRP)
        if family != "gemma3":  # LXT's RMSNorm rule casts to float32 (its Gemma 3 rule patches _norm, which does not)
            norm = next(getattr(module, name) for name in dir(module) if name.endswith("RMSNorm"))
            norm.forward = lxt_rms_norm_float64
    for folder in cases:
        _lxt_case(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# --------------------------------------------------------------------------- the pytest side

import pytest  # noqa: E402

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import lxt_support as lx  # noqa: E402
from cli_support import lrp  # noqa: E402


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[EOS]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]", model_max_length=32)


def _random_model(family: str):
    """Random weights, with RMSNorm weights and biases (Qwen2's q/k/v) moved off their 1 and 0."""
    model = build_model(family, model_config(family))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return model


def _start(folders: list[Path]) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, str(Path(__file__).resolve()), *map(str, folders)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(folders[0]))


def _finish(process: subprocess.Popen, timeout: float = 180) -> None:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"the LXT process ran past {timeout} s")
    if process.returncode == lx.NOT_IMPORTABLE:
        pytest.skip(f"lxt {lx.LXT_VERSION} is installed but does not import ({out.strip()}): {lx.INSTALL_HINT}")
    if process.returncode != 0:
        raise AssertionError(f"the LXT process failed (exit {process.returncode}):\n{err[-4000:]}")


def _generate(wrapped, tokenizer_file: Path, composite: str) -> list[dict[str, Any]]:
    """The ``generated`` list of lrpcli's JSON row for PROMPT (the Python API the CLI runs), ``wrapped`` a
    ``lrpcli.sources.hf.Logits`` (one object for both composites: one capture)."""
    from lrpcli.data.text import TextRecord, TextTokenizer
    from lrpcli.engine.explainer import Explainer
    from lrpcli.runs.generate import explain_generations

    rows: list[dict[str, Any]] = []

    class Keep:
        def write(self, batch):
            rows.extend(batch)

    explainer = Explainer(wrapped, composite, params=EXACT)
    explain_generations(explainer, [TextRecord(1, "1", PROMPT)], TextTokenizer(tokenizer_file, 32), [Keep()], max_new_tokens=N, dtype="float64")
    return rows[0]["generated"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """family (and "cli") -> {"ours": lrpcli's generated tokens, "lxt": LXT's, "hf": transformers' greedy ids,
    "cp": lrpcli's cp_lrp tokens (Llama)}. The LXT process runs while lrpcli and transformers generate here."""
    if not lx.lxt_installed():
        pytest.skip(lx.SKIP_REASON)
    root = tmp_path_factory.mktemp("lxt_generate")
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(root / "tok")
    prompt = tokenizer(PROMPT)["input_ids"]
    models = {family: _random_model(family) for family in FAMILIES}
    folders = [save_case(root / family, family, model, prompt, N, []) for family, model in models.items()]
    # the CLI's folder: a float32 Llama as a user saves it, explained in float64 (LXT: the same weights in float64)
    folder32 = root / "llama32"
    _random_model("llama").float().save_pretrained(folder32)
    tokenizer.save_pretrained(folder32)
    cli_model = transformers.LlamaForCausalLM.from_pretrained(folder32)
    folders.append(save_case(root / "cli", "llama", cli_model, prompt, 3, [3]))
    process = _start(folders)
    results: dict[str, dict[str, Any]] = {}
    from lrpcli.sources.hf import Logits

    wrapped = {family: Logits(model) for family, model in models.items()}
    try:
        with pytest.MonkeyPatch.context() as patch:
            for family, model in models.items():
                float64_norm_and_softmax(family, patch.setattr)
                ours = _generate(wrapped[family], root / "tok" / "tokenizer.json", "attnlrp")
                hf = model.generate(torch.tensor([prompt]), max_new_tokens=N, do_sample=False, eos_token_id=None, pad_token_id=0)
                results[family] = {"ours": ours, "hf": hf[0, len(prompt) :].tolist()}
            results["llama"]["cp"] = _generate(wrapped["llama"], root / "tok" / "tokenizer.json", "cp_lrp")
        # transformers' code as it is: lrpcli's float64 graph of a float32 model has no float32 islands
        texts = root / "prompts.txt"
        texts.write_text(PROMPT + "\n", encoding="utf-8")
        out = root / "cli.jsonl"
        run = lrp("explain", folder32, texts, "--max-new-tokens", "3", "--dtype", "float64", "-p", "epsilon=0", "-p", "stabilizer=0", "-q", out=out)
        assert run.code == 0, run.describe()
        results["cli"] = {"ours": json.loads(out.read_text().splitlines()[0])["generated"]}
    except BaseException:
        process.kill()
        process.communicate()
        raise
    _finish(process)
    for folder in folders:
        results[folder.name]["lxt"] = json.loads((folder / "lxt.json").read_text())
    return results


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lrpcli_generates_transformers_greedy_tokens(runs, family):
    ours = [token["id"] for token in runs[family]["ours"]]
    assert ours == runs[family]["hf"] == [token["id"] for token in runs[family]["lxt"]]
    assert len(ours) == N


@pytest.mark.parametrize("family", [*FAMILIES, "cli"])
def test_each_generated_tokens_relevance_equals_lxt(runs, family):
    ours, theirs = runs[family]["ours"], runs[family]["lxt"]
    assert [token["id"] for token in ours] == [token["id"] for token in theirs] and ours
    for k, (got, want) in enumerate(zip(ours, theirs)):
        assert got["logit"] == pytest.approx(want["logit"], rel=1e-9)  # both processes run the same model
        r_ours, r_lxt = torch.tensor(got["relevance"], dtype=D64), torch.tensor(want["relevance"], dtype=D64)
        assert r_ours.shape == r_lxt.shape == (len(ours[0]["relevance"]) + k,)  # the prompt, then the tokens generated before
        scale = r_lxt.abs().max()
        assert scale > 0 and torch.isfinite(r_ours).all()
        diff = (r_ours - r_lxt).abs().max()
        assert diff <= RTOL * scale, f"{family} token {k} ({got['token']}): max diff {diff:.3g} of max |R| {scale:.3g}"


def test_the_comparison_is_sharp(runs):
    """lrpcli's cp_lrp (the softmax held constant) misses LXT's AttnLRP by far more than RTOL."""
    for got, want in zip(runs["llama"]["cp"], runs["llama"]["lxt"]):
        theirs = torch.tensor(want["relevance"], dtype=D64)
        assert (torch.tensor(got["relevance"], dtype=D64) - theirs).abs().max() > SHARP * theirs.abs().max()
