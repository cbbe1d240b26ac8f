"""zennit, the reference implementation, for lrpcli's parity tests.

zennit 0.5.1 imports torchvision at import time (for its torchvision-specific
canonizers) and torchvision cannot be installed here, so :func:`import_zennit`
imports zennit against a test-only shim (``tests/shims/torchvision``) and then
removes the fake ``torchvision*`` modules and the shim's ``sys.path`` entry again,
so no other code can mistake the shim for torchvision.

zennit is a test-only dependency, installed with ``--no-deps`` (its torchvision
requirement would pull a CUDA torch); where it is absent, :func:`require_zennit`
skips the calling test with an install hint.

What lives here:

* :func:`zennit_composite` -- the zennit composite that corresponds to each of
  lrpcli's built-in composite names (``lrp_0`` and ``epsilon`` are not zennit
  built-ins and are assembled from zennit's rules);
* :func:`zennit_twin` -- a copy of an ``lrpcli.architectures`` model in the form
  zennit needs (residual joins as explicit ``zennit.layer.Sum`` modules) plus the
  batch-norm merging canonizers for it;
* :func:`initial_relevance` / :func:`zennit_lrp` -- zennit's ``Gradient``
  attributor seeded with the same initial relevance lrpcli uses;
* :func:`zennit_layer_relevances` -- per-module relevances, to bisect a mismatch.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import pytest
import torch
from torch import nn

ZENNIT_VERSION = "0.5.1"
SKIP_REASON = f"zennit {ZENNIT_VERSION} not installed: pip install --no-deps zennit=={ZENNIT_VERSION}"
SHIM_DIR = Path(__file__).resolve().parent / "shims"

#: lrpcli's built-in composites, each with a zennit counterpart in :func:`zennit_composite`.
BUILTIN_COMPOSITES = (
    "lrp_0",
    "epsilon",
    "epsilon_plus",
    "epsilon_plus_flat",
    "epsilon_gamma_box",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "excitation_backprop",
    "guided_backprop",
    "deconvnet",
    "beta_smooth",
)

# zennit's defaults, which lrpcli's built-ins share.
DEFAULT_EPSILON = 1e-6
DEFAULT_STABILIZER = 1e-6
DEFAULT_GAMMA = 0.25


# --------------------------------------------------------------------------- import


def _is_shim_module(name: str) -> bool:
    return name == "torchvision" or name.startswith("torchvision.")


def import_zennit() -> ModuleType:
    """Import zennit (against the torchvision shim if needed) and return it.

    Raises ``ModuleNotFoundError`` when zennit is not installed. After the call,
    ``sys.modules`` holds no shim ``torchvision*`` entry and ``sys.path`` no
    shim entry, whether or not the import succeeded.
    """
    if "zennit" in sys.modules and "zennit.torchvision" in sys.modules:
        return sys.modules["zennit"]
    if importlib.util.find_spec("zennit") is None:
        raise ModuleNotFoundError(SKIP_REASON, name="zennit")

    if "torchvision" in sys.modules:
        # a real torchvision was imported already: zennit can use it as it is
        return importlib.import_module("zennit")

    shim = str(SHIM_DIR)
    sys.path.insert(0, shim)
    importlib.invalidate_caches()
    try:
        return importlib.import_module("zennit")
    finally:
        while shim in sys.path:
            sys.path.remove(shim)
        for name in [name for name in sys.modules if _is_shim_module(name)]:
            module = sys.modules[name]
            origin = getattr(module, "__file__", None) or ""
            if getattr(module, "LRPCLI_TEST_SHIM", False) or origin.startswith(shim):
                del sys.modules[name]
        importlib.invalidate_caches()


def require_zennit() -> ModuleType:
    """:func:`import_zennit`, or skip the calling test where zennit is not installed."""
    try:
        return import_zennit()
    except ModuleNotFoundError as error:
        if error.name not in ("zennit", None) and not str(error.name).startswith("zennit"):
            raise  # zennit is there but something it needs is not: a real failure
        pytest.skip(SKIP_REASON)


# --------------------------------------------------------------------------- composites


def _as_bound(value: Any, ndim: int | None = None) -> Any:
    """A ZBox bound for zennit: a float, or a per-channel list as a (1, C, 1, ...) tensor."""
    if isinstance(value, (int, float)):
        return float(value)
    tensor = torch.as_tensor(value, dtype=torch.float32)
    if tensor.ndim == 1 and ndim is not None:
        tensor = tensor.reshape(1, -1, *([1] * (ndim - 2)))
    return tensor


def _zero_stabilizer(z: torch.Tensor) -> torch.Tensor:
    """LRP-0's denominator: ``z`` itself, except that ``R / 0`` gives 0 (lrpcli's convention), not inf/NaN.

    zennit's ``Epsilon(epsilon=0)`` would divide by exact zeros (a zero window of
    an average pool, say); an infinite denominator there makes the quotient 0.
    """
    return torch.where(z == 0, torch.full_like(z, float("inf")), z)


def zennit_composite(
    name: str,
    *,
    canonizers: Sequence[Any] | None = None,
    epsilon: float = DEFAULT_EPSILON,
    stabilizer: float = DEFAULT_STABILIZER,
    gamma: float = DEFAULT_GAMMA,
    low: Any = -3.0,
    high: Any = 3.0,
    input_ndim: int | None = None,
    beta_smooth: float = 10.0,
):
    """zennit's composite for lrpcli's built-in composite ``name``.

    ``low``/``high`` (floats or per-channel lists) are used by ``epsilon_gamma_box``
    only; ``input_ndim`` shapes per-channel bounds as ``(1, C, 1, ...)``.
    """
    zennit = require_zennit()
    from zennit.composites import (
        BetaSmooth,
        DeconvNet,
        EpsilonAlpha2Beta1,
        EpsilonAlpha2Beta1Flat,
        EpsilonGammaBox,
        EpsilonPlus,
        EpsilonPlusFlat,
        ExcitationBackprop,
        GuidedBackprop,
        LayerMapComposite,
        layer_map_base,
    )
    from zennit.layer import Sum
    from zennit.rules import Epsilon, Norm, Pass
    from zennit.types import Activation, AvgPool, BatchNorm, Convolution

    del zennit
    canonizers = list(canonizers or [])
    key = name.strip().lower().replace("-", "_")
    if key == "lrp_0":
        zero = _zero_stabilizer
        layer_map = [
            (Activation, Pass()),
            (Sum, Norm(stabilizer=zero)),
            (AvgPool, Norm(stabilizer=zero)),
            (BatchNorm, Pass()),
            (Convolution, Epsilon(epsilon=zero)),
            (nn.Linear, Epsilon(epsilon=zero)),
        ]
        return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    if key == "epsilon":
        layer_map = layer_map_base(stabilizer) + [
            (Convolution, Epsilon(epsilon=epsilon)),
            (nn.Linear, Epsilon(epsilon=epsilon)),
        ]
        return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    if key == "epsilon_plus":
        return EpsilonPlus(epsilon=epsilon, stabilizer=stabilizer, canonizers=canonizers)
    if key == "epsilon_plus_flat":
        return EpsilonPlusFlat(epsilon=epsilon, stabilizer=stabilizer, canonizers=canonizers)
    if key == "epsilon_alpha2_beta1":
        return EpsilonAlpha2Beta1(epsilon=epsilon, stabilizer=stabilizer, canonizers=canonizers)
    if key == "epsilon_alpha2_beta1_flat":
        return EpsilonAlpha2Beta1Flat(epsilon=epsilon, stabilizer=stabilizer, canonizers=canonizers)
    if key == "epsilon_gamma_box":
        return EpsilonGammaBox(
            low=_as_bound(low, input_ndim),
            high=_as_bound(high, input_ndim),
            epsilon=epsilon,
            gamma=gamma,
            stabilizer=stabilizer,
            canonizers=canonizers,
        )
    if key == "excitation_backprop":
        return ExcitationBackprop(stabilizer=stabilizer, canonizers=canonizers)
    if key == "guided_backprop":
        return GuidedBackprop(canonizers=canonizers)
    if key == "deconvnet":
        return DeconvNet(canonizers=canonizers)
    if key == "beta_smooth":
        return BetaSmooth(beta_smooth=beta_smooth, canonizers=canonizers)
    raise KeyError(f"no zennit counterpart for composite '{name}' (known: {', '.join(BUILTIN_COMPOSITES)})")


# --------------------------------------------------------------------------- models


class ZennitBasicBlock(nn.Module):
    """``lrpcli.architectures.BasicBlock`` with the residual join as a ``zennit.layer.Sum``.

    Shares the wrapped block's submodules (weights). The second ReLU is its own
    module so each ReLU module is called once per forward.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        from zennit.layer import Sum

        self.conv1 = block.conv1
        self.bn1 = block.bn1
        self.relu = block.relu
        self.conv2 = block.conv2
        self.bn2 = block.bn2
        self.downsample = block.downsample
        self.sum = Sum(dim=-1)
        self.relu2 = copy.deepcopy(block.relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = self.sum(torch.stack([out, identity], dim=-1))
        return self.relu2(out)


def _resnet_merge_map(model: nn.Module) -> list[tuple[tuple[str, ...], str]]:
    """(linear names, batch-norm name) pairs of a zennit ResNet twin."""
    from lrpcli.sources.architectures import BasicBlock

    name_map: list[tuple[tuple[str, ...], str]] = [(("conv1",), "bn1")]
    for name, module in model.named_modules():
        if isinstance(module, (BasicBlock, ZennitBasicBlock)):
            name_map.append(((f"{name}.conv1",), f"{name}.bn1"))
            name_map.append(((f"{name}.conv2",), f"{name}.bn2"))
            if module.downsample is not None:
                name_map.append(((f"{name}.downsample.0",), f"{name}.downsample.1"))
    return name_map


_EXACT_MERGE_CLASSES: dict[type, type] = {}


def exact_merge(canonizer_class: type) -> type:
    """``canonizer_class`` (a zennit ``MergeBatchNorm``) made exact.

    zennit folds a batch-norm into the preceding layer and leaves the batch-norm
    in place as "identity" (mean 0, var 1, weight 1, bias 0) -- which still
    divides by ``sqrt(1 + eps)``: a relative error of ``eps / 2`` (5e-6 for the
    default eps) per batch-norm. That changes zennit's relevances by about 1e-5
    relative (up to ~1e-4 where epsilon-rule denominators are small), the size of
    the parity tolerance, while lrpcli's folding is exact. The subclass sets the
    left-over batch-norm's ``eps`` to 0 while the merge is registered (so it is
    an exact identity) and restores it on removal; the folding itself is zennit's.
    """
    cached = _EXACT_MERGE_CLASSES.get(canonizer_class)
    if cached is not None:
        return cached

    class ExactMerge(canonizer_class):
        def register(self, linears, batch_norm):
            super().register(linears, batch_norm)
            self.saved_eps = batch_norm.eps
            batch_norm.eps = 0.0

        def remove(self):
            super().remove()
            self.batch_norm.eps = self.saved_eps

    ExactMerge.__name__ = ExactMerge.__qualname__ = "Exact" + canonizer_class.__name__
    _EXACT_MERGE_CLASSES[canonizer_class] = ExactMerge
    return ExactMerge


def zennit_twin(model: nn.Module, exact: bool = True) -> tuple[nn.Module, list[Any]]:
    """A deep copy of ``model`` as zennit needs it, and the canonizers that merge its batch-norms.

    * ``lrpcli.architectures.ResNet``: blocks become :class:`ZennitBasicBlock`
      (explicit ``Sum``), batch-norms are merged with ``NamedMergeBatchNorm``;
    * anything else (MLP, MiniVGG, VGG): unchanged, ``SequentialMergeBatchNorm``.

    Its ReLUs are not in-place (zennit's ``ReLUBetaSmooth`` would read the input the ReLU overwrote).

    With ``exact`` (the default) the merge canonizers are wrapped by
    :func:`exact_merge`; ``exact=False`` gives zennit's canonizers as they are.
    """
    require_zennit()
    from zennit.canonizers import NamedMergeBatchNorm, SequentialMergeBatchNorm

    from lrpcli.sources.architectures import BasicBlock, ResNet

    if exact:
        NamedMergeBatchNorm = exact_merge(NamedMergeBatchNorm)  # noqa: N806
        SequentialMergeBatchNorm = exact_merge(SequentialMergeBatchNorm)  # noqa: N806

    twin = copy.deepcopy(model).eval()
    for module in twin.modules():  # zennit's ReLUBetaSmooth reads its input after an in-place ReLU overwrote it
        if isinstance(module, nn.ReLU):
            module.inplace = False
    if isinstance(twin, ResNet):
        for parent in list(twin.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, BasicBlock):
                    setattr(parent, child_name, ZennitBasicBlock(child))
        return twin, [NamedMergeBatchNorm(_resnet_merge_map(twin))]
    if any(isinstance(module, BasicBlock) for module in twin.modules()):
        raise TypeError("BasicBlock outside lrpcli.architectures.ResNet: extend zennit_twin")
    return twin, [SequentialMergeBatchNorm()]


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every batch-norm random running statistics and affine parameters (so folding matters)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                module.running_mean.copy_(0.3 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(size, generator=generator))
                if module.affine:
                    module.weight.copy_(0.6 + 0.8 * torch.rand(size, generator=generator))
                    module.bias.copy_(0.2 * torch.randn(size, generator=generator))


# --------------------------------------------------------------------------- attribution


def initial_relevance(outputs: torch.Tensor, targets: torch.Tensor, init: str = "value") -> torch.Tensor:
    """lrpcli's seed: zeros except, at each sample's target, the target logit (``value``) or 1 (``one-hot``)."""
    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    onehot = torch.zeros_like(outputs)
    onehot[torch.arange(outputs.shape[0]), targets] = 1.0
    if init == "value":
        return onehot * outputs.detach()
    if init in ("one-hot", "one_hot", "onehot"):
        return onehot
    raise ValueError(f"unknown init '{init}'")


def zennit_lrp(model: nn.Module, x: torch.Tensor, composite: Any, seed: torch.Tensor | Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs, input relevance) from zennit's ``Gradient`` attributor seeded with ``seed``.

    ``seed`` is a tensor shaped like the outputs or a function of the outputs.
    """
    require_zennit()
    from zennit.attribution import Gradient

    x = x.detach().clone().requires_grad_(True)
    with Gradient(model=model, composite=composite) as attributor:
        outputs, relevance = attributor(x, seed)
    return outputs.detach(), relevance.detach()


def zennit_layer_relevances(
    model: nn.Module, x: torch.Tensor, composite: Any, seed: torch.Tensor, module_types: tuple = (nn.Module,)
) -> dict[str, torch.Tensor]:
    """Relevance at each module's *input* (name -> tensor) under zennit, for bisecting mismatches.

    The hook on each matching leaf module runs before zennit's own (``prepend``),
    so it sees the module's original input, whose gradient is the relevance zennit
    passes to the layer below (summed over consumers, for an input used twice).
    """
    require_zennit()
    from zennit.attribution import Gradient

    captured: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def pre_hook(module, inputs):
            tensor = inputs[0]
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                tensor.register_hook(lambda grad: captured.__setitem__(name, grad.detach().clone()))

        return pre_hook

    x = x.detach().clone().requires_grad_(True)
    with Gradient(model=model, composite=composite) as attributor:
        for name, module in model.named_modules():
            if name and not list(module.children()) and isinstance(module, module_types):
                handles.append(module.register_forward_pre_hook(make_hook(name), prepend=True))
        try:
            attributor(x, seed)
        finally:
            for handle in handles:
                handle.remove()
    return captured
