"""Token ids that pass through ops before their embedding lookup still get relevance (issue 27, found by the sweep).

Before, a token's relevance was read only at a lookup of the input ids or a view of them: MusicGen's
reshape-then-select, XLM's slice, CPM-Ant's prompt concatenated before the ids, Gemma3's copy with image-token
ids overwritten and CANINE's hash buckets all made the lookup a constant, and the tokens got exactly 0, silently.

The references are independent of lrpcli's walk:

- toys (float64, bias-free, LRP-0): the same route written on one-hot rows ``X`` (B, T, V) instead of ids, the
  lookup as ``X @ W``; the model is linear in X, so LRP-0 is gradient x input there, ``(X * dX).sum(-1)``
  (Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019, sec. 10.2.1: LRP-0 on a linear map
  is gradient x input), and it sums to the logit where no constant id is looked up (conservation);
- real families: the modified-gradient AttnLRP oracle (tests/gradient_oracle.py), relevance = (E * E.grad)
  summed over the hidden dim at the lookups of the ids, run on the same weights. It follows ids through views,
  slices and selections (XLM, MusicGen); Gemma3 is run with its image-token replacement off (no image token in
  the text: that replacement changes no id), CANINE with each hash lookup written as a lookup of the ids in the
  re-indexed table, the same function.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from lrpcli import explain
from lrpcli.errors import ModelError

EXACT = {"epsilon": 0.0, "stabilizer": 0.0}
V, T, H = 12, 6, 5


def _hash(ids: torch.Tensor, prime: int) -> torch.Tensor:
    return (ids + 1) * prime % 7


def _overwritten(x: torch.Tensor) -> torch.Tensor:
    """Rows of id 5 replaced by the row of id 0, a constant (which rows: read off the ids, not the rows' values)."""
    fives = x.detach()[..., 5:6]
    return x * (1 - fives) + fives * nn.functional.one_hot(torch.tensor(0), V).to(x)


#: route name -> (what the model does to the ids, the same on one-hot rows (B, T, V), whether the lookups hold
#: only the ids (no constant ids beside them: the relevance sums to the logit))
ROUTES = {
    "reshape_select": (lambda i: i.reshape(-1, 1, i.shape[1])[:, 0], lambda x: x.reshape(-1, 1, *x.shape[1:])[:, 0], True),
    "slice": (lambda i: i[:, 2:], lambda x: x[:, 2:], True),
    "index": (lambda i: i[:, [3, 1, 1, 0]], lambda x: x[:, [3, 1, 1, 0]], True),
    "expand_flip": (lambda i: i.unsqueeze(1).expand(-1, 2, -1).flip(-1).reshape(i.shape[0], -1),
                    lambda x: x.unsqueeze(1).expand(-1, 2, -1, -1).flip(2).reshape(x.shape[0], -1, x.shape[-1]), True),
    "cat_prompt": (lambda i: torch.cat([torch.full((i.shape[0], 2), 4), i], 1),
                   lambda x: torch.cat([nn.functional.one_hot(torch.full((x.shape[0], 2), 4), V).to(x), x], 1), False),
    "overwrite": (lambda i: torch.where(i == 5, torch.zeros_like(i), i),
                  lambda x: _overwritten(x), False),
}


class Routed(nn.Module):
    """Ids -> ``route`` -> one lookup (or CANINE-like hashed lookups: ``hashes`` primes) -> mean over the
    places -> a bias-free linear head. ``onehot``: the reference form, one-hot rows in, ``X @ W`` lookups."""

    def __init__(self, route: str, hashes: tuple[int, ...] = ()):
        super().__init__()
        self.route, self.hashes = route, hashes
        tables = len(hashes) or 1
        self.tables = nn.ModuleList(nn.Embedding(V, H) for _ in range(tables))
        self.head = nn.Linear(H * tables, 3, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ROUTES[self.route][0](ids)
        if self.hashes:
            h = torch.cat([table(_hash(ids, p)) for table, p in zip(self.tables, self.hashes)], -1)
        else:
            h = self.tables[0](ids)
        return self.head(h.mean(1))

    def onehot(self, x: torch.Tensor) -> torch.Tensor:
        x = ROUTES[self.route][1](x)
        if self.hashes:  # a hash is a fixed map of rows: one-hot(hash(id)) = one-hot(id) @ P
            rows = torch.arange(V)
            h = torch.cat([x @ table.weight[_hash(rows, p)] for table, p in zip(self.tables, self.hashes)], -1)
        else:
            h = x @ self.tables[0].weight
        return self.head(h.mean(1))


def _reference(model: Routed, ids: torch.Tensor, target: int) -> torch.Tensor:
    x = nn.functional.one_hot(ids, V).double().requires_grad_(True)
    out = model.onehot(x)
    (grad,) = torch.autograd.grad(out[:, target].sum(), x)
    return (x * grad).sum(-1).detach()


@pytest.mark.parametrize("hashes", [(), (31, 43)], ids=["lookup", "hashed"])
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_routes_on_the_ids_carry_relevance_to_their_tokens(route, hashes):
    """LRP-0 of the ids = gradient x input at the one-hot rows of the same model; where every looked-up id is a
    token's, it sums to the logit. Before: exactly 0 (the lookup of routed ids was a constant)."""
    torch.manual_seed(0)
    model = Routed(route, hashes).double().eval()
    ids = torch.randint(0, V, (3, T))
    ids[0, 1] = 5  # an id the "overwrite" route replaces
    with torch.no_grad():
        own = model(ids)
    result = explain(model, ids, "lrp_0", target=1, params=EXACT)
    expected = _reference(model, ids, 1)
    assert (result.outputs - own).abs().max() < 1e-12
    assert expected.abs().max() > 0
    assert (result.relevance - expected).abs().max() <= 1e-10 * expected.abs().max()
    if ROUTES[route][2]:
        assert torch.allclose(result.relevance.sum(1), own[:, 1], rtol=1e-10, atol=0)


class Counted(nn.Module):
    """Looks up a count computed from the ids (a cumulative sum): no route to the tokens."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(V * T, H)
        self.head = nn.Linear(H, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.table(ids.cumsum(1)).mean(1))


def test_ids_that_reach_the_output_only_through_a_computed_lookup_are_an_error_naming_it():
    """Before: relevance exactly 0, no word. Now a ModelError names the lookup and the op that made its ids."""
    torch.manual_seed(0)
    with pytest.raises(ModelError) as caught:
        explain(Counted().eval(), torch.randint(0, V, (2, T)), "epsilon")
    message = str(caught.value)
    assert "cumsum" in message and "table" in message and "no relevance" in message
    assert caught.value.hint and "inputs_embeds" in caught.value.hint


# ------------------------------------------------------------------------------------------- real families

transformers = pytest.importorskip("transformers")
_spec = importlib.util.spec_from_file_location("hf_zoo", Path(__file__).resolve().parent.parent / "benchmarks" / "hf_zoo.py")
hf_zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hf_zoo)

from gradient_oracle import embedding_relevance  # noqa: E402

from lrpcli.sources import hf  # noqa: E402


def _canine_direct(model):
    """CANINE's hash lookups as lookups of the ids themselves in each table re-indexed by its hash (the same
    function on ids below ``V_IDS``), for the oracle, which follows ids through views only."""
    from transformers.models.canine.modeling_canine import _PRIMES

    embeddings = model.canine.char_embeddings

    def direct(input_ids, embedding_size, num_hashes, num_buckets):
        rows = torch.arange(V_IDS)
        shards = [
            nn.functional.embedding(input_ids, getattr(embeddings, f"HashBucketCodepointEmbedder_{i}").weight[(rows + 1) * p % num_buckets])
            for i, p in enumerate(_PRIMES[:num_hashes])
        ]
        return torch.cat(shards, -1)

    return embeddings, direct


V_IDS = 40


def _oracle(key: str, model, wrapped, ids: torch.Tensor, target: int) -> torch.Tensor:
    if key.endswith("gemma3"):
        old = model.config.image_token_id
        model.config.image_token_id = 0  # below the vocabulary: the ids go to the lookup as they are
        try:
            return embedding_relevance(wrapped, ids, target, "attnlrp")
        finally:
            model.config.image_token_id = old
    if key.endswith("canine"):
        embeddings, direct = _canine_direct(model)
        embeddings._embed_hash_buckets = direct
        try:
            return embedding_relevance(wrapped, ids, target, "attnlrp")
        finally:
            del embeddings._embed_hash_buckets
    return embedding_relevance(wrapped, ids, target, "attnlrp")


#: family -> (what stood between the ids and their lookup, float64 (MusicGen's and CANINE's own forward make
#: constants float64 cannot hold or NaNs), tolerance of max|R|)
FAMILIES = {
    "seq:xlm": ("slice (the last positions)", True, 1e-9),
    "causal:musicgen": ("reshape into codebooks, select", False, 1e-5),
    "seq:gemma3": ("clone, index_put (image-token ids to 0)", True, 1e-5),
    "seq:canine": ("hash buckets (id + 1) * prime % buckets", False, 1e-5),
}


@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_families_whose_ids_pass_ops_before_the_lookup_equal_the_oracle(key):
    """AttnLRP token relevance (tiny random configs of benchmarks/hf_zoo.py) = the modified-gradient oracle;
    Gemma3's parts compute in float32 (1e-7 measured), MusicGen and CANINE run in float32. Before: all 0."""
    _cause, double, tolerance = FAMILIES[key]
    torch.manual_seed(0)
    config, model, _ = hf_zoo.build(key)
    model = (model.double() if double else model).eval()
    wrapped = (hf.NextTokenLogits if key.startswith("causal") else hf.Logits)(model).eval()
    ids = torch.randint(3, V_IDS, (2, 8))
    result = explain(wrapped, ids, "attnlrp", target=1, params=EXACT)
    expected = _oracle(key, model, wrapped, ids, 1)
    assert torch.isfinite(result.relevance).all()
    assert expected.abs().max() > 0
    assert (result.relevance - expected).abs().max() <= tolerance * expected.abs().max()


def test_cpmant_prompt_before_the_ids_gives_the_tokens_relevance():
    """CPM-Ant looks up its prompt ids concatenated before the text's (cat of a constant and the ids, cast to
    int32): the tokens get relevance, all of the lookups' but the prompt's share. The oracle does not follow a
    cat, so the check is the per-layer ledger: what the token lookup received over its text places."""
    torch.manual_seed(0)
    config, model, _ = hf_zoo.build("causal:cpmant")
    wrapped = hf.NextTokenLogits(model.double().eval()).eval()
    ids = torch.randint(3, V_IDS, (2, 8))
    result = explain(wrapped, ids, "attnlrp", target=1, params=EXACT, embedding_relevance=True)
    embedding = result.embedding  # the lookups' relevance, prompt places first
    assert result.relevance.abs().sum() > 0
    assert embedding.shape[1] > ids.shape[1]
    assert torch.allclose(result.relevance, embedding[:, -ids.shape[1]:].sum(-1), rtol=1e-10, atol=1e-14)
