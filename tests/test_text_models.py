"""A 1-D CNN over token embeddings: LRP-0 equals gradient x input at the embedding (a bias-free ReLU net)."""

from __future__ import annotations

import torch
from torch import nn

from lrpcli import explain


class TextCNN(nn.Module):
    """Embedding -> Conv1d over the tokens -> ReLU -> max over time -> linear (Kim 2014, bias-free)."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(30, 8, padding_idx=0)
        self.conv = nn.Conv1d(8, 6, kernel_size=3, padding=1, bias=False)
        self.head = nn.Linear(6, 2, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.from_embedded(self.embedding(ids)))

    def from_embedded(self, e: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(e.transpose(1, 2))).amax(dim=2)


def test_text_cnn_lrp0_is_gradient_times_input_at_the_embedding():
    torch.manual_seed(0)
    model = TextCNN().double().eval()
    ids = torch.randint(1, 30, (4, 9))
    ids[0, 6:] = 0
    result = explain(model, ids, "lrp_0", target=1, embedding_relevance=True)
    e = model.embedding(ids).detach().requires_grad_(True)
    model.head(model.from_embedded(e))[:, 1].sum().backward()
    torch.testing.assert_close(result.embedding, e * e.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.relevance.sum(1), result.outputs[:, 1], rtol=1e-10, atol=1e-12)
