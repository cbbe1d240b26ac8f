"""Small reference architectures shipped with lrpcli.

Used by the sample models, the tests and the benchmarks, and loadable with
``--arch lrpcli.architectures:MiniVGG``. Residual joins are written the way people
write them (``out += identity`` / ``x + y``), not with special modules, because
lrpcli's graph capture handles them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


__all__ = ['MLP', 'MiniVGG', 'VGG', 'vgg16', 'vgg16_bn', 'BasicBlock', 'ResNet', 'resnet18', 'DigitsCNN', 'TransformerBlock', 'ViT', 'TextBag', 'TextLSTM', 'TextTransformer']


class MLP(nn.Module):
    """A dense ReLU network (tabular data)."""

    def __init__(self, in_features: int = 30, hidden: tuple[int, ...] = (64, 32), num_classes: int = 2, bias: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size, bias=bias), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, num_classes, bias=bias))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MiniVGG(nn.Module):
    """The CIFAR-10 network of seed 002 (32x32 colour input)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.35),
            nn.Conv2d(w, 2 * w, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(2 * w, 4 * w, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.35),
            nn.Conv2d(4 * w, 4 * w, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(8 * 8 * 4 * w, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.45),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG with optional batch-norm; ``cfg`` lists conv widths and "M" for max-pool.

    ``VGG()`` is VGG16 (torchvision's layout: features, avgpool, classifier).
    """

    def __init__(
        self,
        cfg: tuple = _VGG16_CFG,
        batch_norm: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
        hidden: int = 4096,
        pool_size: int = 7,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU(inplace=True))
            channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(channels * pool_size * pool_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def vgg16(num_classes: int = 1000) -> VGG:
    return VGG(_VGG16_CFG, batch_norm=False, num_classes=num_classes)


def vgg16_bn(num_classes: int = 1000) -> VGG:
    return VGG(_VGG16_CFG, batch_norm=True, num_classes=num_classes)


class BasicBlock(nn.Module):
    """ResNet basic block; the residual join is a plain ``out += identity``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """A ResNet with basic blocks (``ResNet()`` has ResNet-18's layout)."""

    def __init__(
        self,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_channels: int = 3,
        stem_stride: int = 2,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=stem_stride, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        in_planes = widths[0]
        for index, (count, planes) in enumerate(zip(layers, widths)):
            blocks = []
            for block_index in range(count):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = (stages + [nn.Identity()] * 4)[:4]
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes=num_classes)


class DigitsCNN(nn.Module):
    """A small CNN for scikit-learn's 8x8 digits (1x8x8 input); the sample digits model.

    ``bias=False`` drops every bias, so LRP-0 relevance sums exactly to the logit.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, width: int = 16, hidden: int = 64, bias: bool = True
    ):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, kernel_size=3, padding=1, bias=bias),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, kernel_size=3, padding=1, bias=bias),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * w * 4 * 4, hidden, bias=bias),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TransformerBlock(nn.Module):
    """A pre-norm transformer encoder block: multi-head self-attention and a GELU MLP, each residual.

    ``mask`` (optional, boolean, broadcastable to (batch, heads, queries, keys)) is the attention
    mask of ``scaled_dot_product_attention``: False hides a key (the text models pass the padding).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (indexing, not unpacking: TorchScript scripts it)
        attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al. 2021): patch embedding, a class token, position
    embeddings, pre-norm blocks and a linear head on the class token. The sample ViT (AttnLRP/CP-LRP)."""

    def __init__(
        self,
        num_classes: int = 4,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        dim: int = 32,
        depth: int = 2,
        heads: int = 2,
        mlp_ratio: int = 2,
    ):
        super().__init__()
        tokens = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


# --------------------------------------------------------------------------- text classifiers
# They take int64 token ids (batch, length), right-padded with ``pad_id``, and nothing else: the
# padding mask is computed from the ids inside forward, so a saved model needs no second input and
# lrp holds the mask constant (it is never explained). The sample text models (text_sentiment/).


def _real_tokens(ids: torch.Tensor, pad_id: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The padding mask as (batch, length, 1) floats (1 = a real token) and the count of real tokens
    per text (batch, 1), at least 1 so that an all-padding row divides by 1, not 0."""
    mask = (ids != pad_id).unsqueeze(-1).to(dtype)
    return mask, mask.sum(1).clamp(min=1.0)


class TextBag(nn.Module):
    """Bag of embeddings: the mean of the real tokens' embeddings, then a linear layer.

    The simplest text model: each token's relevance is its own embedding's share of the logit, and
    with ``bias=False`` LRP-0 / epsilon relevance sums exactly to the logit (the mean's divisor is
    computed from the ids, a constant).
    """

    def __init__(self, vocab_size: int, dim: int = 32, num_classes: int = 2, pad_id: int = 0, bias: bool = True):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.head = nn.Linear(dim, num_classes, bias=bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(ids)
        mask, count = _real_tokens(ids, self.pad_id, e.dtype)
        return self.head((e * mask).sum(1) / count)


class TextLSTM(nn.Module):
    """Embedding, an LSTM (bidirectional by default), the mean of its outputs over the real tokens,
    a linear layer. For the recurrent rule (Arras et al. 2017).

    Texts are right-padded, so the backward direction reads the padding before the text. The
    padding embeds to zeros and the LSTM has no bias, so from a zero state a padded step leaves the
    state exactly zero (gates 1/2, candidate tanh(0) = 0): the outputs and the relevance of a text
    do not depend on how much padding its batch adds. (An LSTM with biases would drift through the
    padding and answer differently in a longer batch.) Padded steps are left out of the mean.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 32,
        hidden: int = 32,
        num_classes: int = 2,
        pad_id: int = 0,
        bidirectional: bool = True,
    ):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.rnn = nn.LSTM(dim, hidden, bias=False, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(ids)
        out, _ = self.rnn(e)
        mask, count = _real_tokens(ids, self.pad_id, out.dtype)
        return self.head((out * mask).sum(1) / count)


class TextTransformer(nn.Module):
    """A small transformer encoder for text: token plus learned position embeddings, pre-norm
    ``TransformerBlock``s whose attention hides the padded keys (a boolean mask from the ids, so a
    padded key's score is -inf and its weight exactly 0; every text has a real token, so no row is
    all -inf and nothing is NaN), the mean over the real tokens, LayerNorm and a linear head.
    For AttnLRP / CP-LRP on text. Takes any length up to ``max_length``.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 32,
        heads: int = 2,
        layers: int = 2,
        max_length: int = 64,
        num_classes: int = 2,
        pad_id: int = 0,
        mlp_ratio: int = 2,
    ):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.pos = nn.Parameter(torch.randn(1, max_length, dim) * 0.02)
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, mlp_ratio) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        keys = (ids != self.pad_id)[:, None, None, :]  # (batch, 1, 1, keys): False hides a padded key
        for block in self.blocks:
            x = block(x, keys)
        mask, count = _real_tokens(ids, self.pad_id, x.dtype)
        return self.head(self.norm((x * mask).sum(1) / count))
