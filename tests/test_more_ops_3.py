"""More ops transformers' families stopped at (issue 27 item 6): ``col2im`` (MobileViT-v2) and ``log_sigmoid`` (xLSTM),
each on a tiny module against an independent check, then the Hugging Face family end to end.

- ``col2im`` (``F.fold``, MobileViT-v2 folds its patches back into a feature map): a sum of (possibly overlapping)
  patches, a linear map without bias, split proportionally as a sum (ops.py, kind "avgpool"): LRP-0 = gradient x
  input on a bias-free ReLU net (Montavon et al. 2019, sec. 10.2.1). A route would hand every overlapping patch the
  whole sum's relevance.
- ``log_sigmoid`` (xLSTM's forget gate, inside its mLSTM cell with the running maximum that keeps ``exp`` finite):
  the cell's queries, keys and gate pre-activations are held (lrpcli/engine/held_kernels.py, as MambaLRP holds a
  selective SSM's gates and CP-LRP an attention's weights), so the cell is a linear recurrence in its values: LRP-0
  equals gradient x input of the same model with those inputs detached.
- the families end to end: the captured graph's logits equal the model's, finite relevance, AttnLRP equal to the
  modified-gradient oracle (tests/gradient_oracle.py) with the held parts detached.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradient_oracle import embedding_relevance, modified_gradient_relevance
from lrpcli import explain

from test_hf_zoo_families import D64, EXACT, _close, _gradient_times_input  # the same helpers

transformers = pytest.importorskip("transformers")

from test_more_ops import _Logits  # noqa: E402  (the same wrapper)
from test_more_ops_2 import _scaled_weights  # noqa: E402  (weights of a usable size for MobileViT)


# --------------------------------------------------------------------------- col2im


class Folded(nn.Module):
    """A bias-free ReLU net whose 2x2 patches (3 channels each, 4x4 of them) are folded into a 5x5 map with stride 1:
    neighbouring patches overlap, and fold sums them."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(2, 12, 1, bias=False), nn.Linear(3 * 5 * 5, 4, bias=False)

    def forward(self, x):  # (batch, 2, 4, 4)
        patches = F.relu(self.conv(x)).flatten(2)  # (batch, 3 * 2 * 2, 16 blocks)
        return self.head(F.fold(patches, output_size=(5, 5), kernel_size=2, stride=1).flatten(1))


def test_fold_of_overlapping_patches_is_lrp0_equal_to_gradient_times_input():
    """Was "unsupported op 'col2im'"."""
    torch.manual_seed(0)
    model = Folded().double().eval()
    x = torch.randn(3, 2, 4, 4, dtype=D64)
    result = explain(model, x, "lrp_0", target=1, params=EXACT)
    assert torch.equal(result.outputs, model(x))
    _close(result.relevance, _gradient_times_input(model, x, 1))
    assert torch.allclose(result.relevance.sum((1, 2, 3)), model(x)[:, 1].detach())  # conserved: no bias


# --------------------------------------------------------------------------- xLSTM's mLSTM cell


def _xlstm_config(**kwargs):
    """Its cache rounds q/k and v widths (x 0.5, x 1) up to multiples of 64: a width whose both are (benchmarks/hf_zoo.py);
    its cell state in float64 (float32 by default), so that the checks can be exact."""
    return transformers.xLSTMConfig(vocab_size=40, hidden_size=128, embedding_dim=128, num_heads=2, inference_state_dtype="float64", **kwargs)


class Cell(nn.Module):
    """transformers' mLSTM backend (its inference kernel: log-sigmoid forget gate, running maximum) between bias-free
    linear maps: queries, keys, values and the two gates' pre-activations from the input, a head on the output."""

    def __init__(self, width: int = 128, heads: int = 2):
        super().__init__()
        from transformers.models.xlstm.modeling_xlstm import xLSTMBackend

        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(4, width, bias=False) for _ in range(3))
        self.gates = nn.Linear(4, 2 * heads, bias=False)
        self.backend = xLSTMBackend(_xlstm_config(num_blocks=1))
        self.head = nn.Linear(width, 3, bias=False)

    def forward(self, x):  # (batch, tokens, 4)
        batch, tokens, _ = x.shape

        def split(t):
            return t.reshape(batch, tokens, self.heads, -1).transpose(1, 2)

        igate, fgate = self.gates(x).transpose(1, 2).split(self.heads, dim=1)  # (batch, heads, tokens) each
        h, _state = self.backend(query=split(self.q(x)), key=split(self.k(x)), value=split(self.v(x)), igate=igate, fgate=fgate)
        return self.head(h.transpose(1, 2).reshape(batch, tokens, -1)[:, -1])


@contextlib.contextmanager
def _detached_inputs(model: nn.Module, names=("query", "key", "igate", "fgate")):
    """The xLSTM backends' held inputs detached: the oracle's form of held."""

    def detach(_module, args, kwargs):
        return args, {name: value.detach() if name in names else value for name, value in kwargs.items()}

    handles = [m.register_forward_pre_hook(detach, with_kwargs=True) for m in model.modules() if type(m).__name__ == "xLSTMBackend"]
    assert handles
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def test_mlstm_cell_with_its_gates_held_is_lrp0_equal_to_gradient_times_input():
    """The cell with q, k and the gates held is linear in v (a recurrence with held coefficients, its normaliser held):
    LRP-0 conserves and equals gradient x input with those detached. Was "unsupported op 'log_sigmoid'"."""
    torch.manual_seed(0)
    model = Cell().double().eval()
    x = torch.randn(2, 5, 4, dtype=D64)
    result = explain(model, x, "lrp_0", target=1, params=EXACT)
    _close(result.outputs, model(x).detach(), rtol=1e-12)
    with _detached_inputs(model):
        expected = _gradient_times_input(model, x, 1)
    _close(result.relevance, expected)
    assert torch.allclose(result.relevance.sum((1, 2)), model(x)[:, 1].detach())  # conserved: no bias


# --------------------------------------------------------------------------- the families end to end


def _mobilevitv2():
    config = transformers.MobileViTV2Config(num_labels=3, image_size=64, patch_size=2, width_multiplier=0.25)
    return _Logits(transformers.MobileViTV2ForImageClassification(config), key="pixel_values")


def _xlstm():
    return _Logits(transformers.xLSTMForCausalLM(_xlstm_config(num_blocks=2)), last=True)


@pytest.mark.parametrize("family", ["mobilevitv2", "xlstm"])
def test_transformers_family_explains_as_the_oracle(family):
    """A tiny random config in float64: the captured graph's logits equal the model's, finite relevance, and AttnLRP
    equal to the oracle (to 1e-6, as tests/test_more_ops_2.py) on the same model with its held parts detached."""
    torch.manual_seed(12)
    model = (_mobilevitv2() if family == "mobilevitv2" else _xlstm()).double().eval()
    if family == "mobilevitv2":
        _scaled_weights(model)
        x = torch.randn(2, 3, 64, 64, dtype=D64)
    else:
        x = torch.randint(3, 40, (2, 6))
    with torch.no_grad():
        own = model(x)
    result = explain(model, x, "attnlrp", target=1, params=EXACT)
    assert torch.isfinite(result.relevance).all()
    assert (result.outputs - own).abs().max() <= 1e-10 * own.abs().max()
    if family == "mobilevitv2":
        reference = modified_gradient_relevance(model, x, 1, "attnlrp")
    else:
        with _detached_inputs(model):
            reference = embedding_relevance(model, x, 1, "attnlrp")
    _close(result.relevance, reference, rtol=1e-6)
