"""nn.LSTM and nn.GRU: the rule of Arras et al. 2017, checked against a hand-written cell loop.

lrp writes the fused recurrent op out as its cells (torch's own decomposition) and treats the
sigmoid gates as constants, so the relevance follows the signal through the cell state. The
reference below knows nothing of lrpcli or of that decomposition: it re-implements the cells
from the module's weights in plain torch, with the same rule as a modified gradient (gates
detached, tanh passed as the identity: grad = out / x), so LRP-0 = gradient x input.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrpcli import explain

TINY = 1e-12


def _identity_grad(f, x: torch.Tensor) -> torch.Tensor:
    """f(x) forward, relevance passed on unchanged backward: x * (f(x) / x) with the ratio detached."""
    safe = torch.where(x.abs() < TINY, torch.full_like(x, TINY), x)
    return x * (f(x) / safe).detach()


def _lstm_reference(rnn: nn.LSTM, e: torch.Tensor) -> torch.Tensor:
    """Outputs of every step (batch, time, dirs * hidden) with the Arras rule's modified gradient."""
    layer_input = e
    for layer in range(rnn.num_layers):
        outputs = []
        for direction in range(2 if rnn.bidirectional else 1):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
            b = getattr(rnn, "bias_ih" + sfx) + getattr(rnn, "bias_hh" + sfx) if rnn.bias else 0.0
            batch, steps = layer_input.shape[:2]
            h = layer_input.new_zeros(batch, rnn.hidden_size)
            c = layer_input.new_zeros(batch, rnn.hidden_size)
            seq = [None] * steps
            order = range(steps - 1, -1, -1) if direction else range(steps)
            for t in order:
                gates = layer_input[:, t] @ w_ih.T + h @ w_hh.T + b
                i, f, g, o = gates.chunk(4, dim=1)
                i, f, o = torch.sigmoid(i).detach(), torch.sigmoid(f).detach(), torch.sigmoid(o).detach()
                c = f * c + i * _identity_grad(torch.tanh, g)
                h = o * _identity_grad(torch.tanh, c)
                seq[t] = h
            outputs.append(torch.stack(seq, dim=1))
        layer_input = torch.cat(outputs, dim=2)
    return layer_input


def _gru_reference(rnn: nn.GRU, e: torch.Tensor) -> torch.Tensor:
    layer_input = e
    for layer in range(rnn.num_layers):
        outputs = []
        for direction in range(2 if rnn.bidirectional else 1):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
            b_ih = getattr(rnn, "bias_ih" + sfx) if rnn.bias else 0.0
            b_hh = getattr(rnn, "bias_hh" + sfx) if rnn.bias else 0.0
            batch, steps = layer_input.shape[:2]
            h = layer_input.new_zeros(batch, rnn.hidden_size)
            seq = [None] * steps
            for t in range(steps - 1, -1, -1) if direction else range(steps):
                x_r, x_z, x_n = (layer_input[:, t] @ w_ih.T + b_ih).chunk(3, dim=1)
                h_r, h_z, h_n = (h @ w_hh.T + b_hh).chunk(3, dim=1)
                r = torch.sigmoid(x_r + h_r).detach()
                z = torch.sigmoid(x_z + h_z).detach()
                n = _identity_grad(torch.tanh, x_n + r * h_n)
                h = (1 - z) * n + z * h
                seq[t] = h
            outputs.append(torch.stack(seq, dim=1))
        layer_input = torch.cat(outputs, dim=2)
    return layer_input


class Recurrent(nn.Module):
    """Token ids -> embedding -> LSTM/GRU -> the last step's state -> logits."""

    def __init__(self, cell: str = "lstm", layers: int = 1, bidirectional: bool = False, bias: bool = True):
        super().__init__()
        self.embedding = nn.Embedding(40, 6, padding_idx=0)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(6, 5, num_layers=layers, batch_first=True, bidirectional=bidirectional, bias=bias)
        self.head = nn.Linear(5 * (2 if bidirectional else 1), 3, bias=bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embedding(ids))
        return self.head(out[:, -1])

    def reference(self, ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        e = self.embedding(ids).detach().requires_grad_(True)
        steps = (_lstm_reference if isinstance(self.rnn, nn.LSTM) else _gru_reference)(self.rnn, e)
        logits = self.head(steps[:, -1])
        torch.testing.assert_close(logits, self(ids))  # the reference computes the same function
        logits.gather(1, target[:, None]).sum().backward()
        return (e * e.grad).sum(-1)


CASES = [
    ("lstm", 1, False),
    ("lstm", 2, False),
    ("lstm", 1, True),
    ("lstm", 2, True),
    ("gru", 1, False),
    ("gru", 2, True),
]


@pytest.mark.parametrize("cell,layers,bidirectional", CASES)
def test_recurrent_relevance_equals_the_hand_written_arras_rule(cell, layers, bidirectional):
    torch.manual_seed(0)
    model = Recurrent(cell, layers, bidirectional).double().eval()
    ids = torch.randint(1, 40, (3, 7))
    target = torch.tensor([0, 2, 1])
    result = explain(model, ids, "lrp_0", target=target)
    expected = model.reference(ids, target)
    assert result.relevance.shape == ids.shape
    torch.testing.assert_close(result.relevance, expected, rtol=1e-7, atol=1e-9 * float(expected.abs().max()))


@pytest.mark.parametrize("cell,layers,bidirectional", CASES[:2] + CASES[4:5])
def test_bias_free_recurrent_models_conserve_exactly(cell, layers, bidirectional):
    torch.manual_seed(1)
    model = Recurrent(cell, layers, bidirectional, bias=False).double().eval()
    ids = torch.randint(1, 40, (4, 9))
    result = explain(model, ids, "lrp_0", target=0)
    torch.testing.assert_close(result.relevance.sum(1), result.outputs[:, 0], rtol=0, atol=1e-12)


def test_padding_tokens_get_no_relevance():
    """Pad ids look up the zero row of an embedding with padding_idx: nothing to explain there."""
    torch.manual_seed(2)
    model = Recurrent("lstm").double().eval()
    ids = torch.randint(1, 40, (2, 6))
    ids[:, :2] = 0  # left padding, so the last step still reads the text
    result = explain(model, ids, "epsilon", target=0)
    assert torch.all(result.relevance[:, :2] == 0)
    assert torch.all(result.relevance[:, 2:].abs() > 0)
