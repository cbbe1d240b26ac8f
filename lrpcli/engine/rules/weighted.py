"""Rules for weighted layers only (conv, linear, batch-norm): z+, alpha-beta, gamma, flat, w², z^B.

Each modifies the layer's weights (``rho(W)``) or inputs before the divide-and-transpose
of the efficient form (see ``base.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError
from ..graph import Node
from ..transposes import transpose
from .base import STABILIZER_MODE, ZERO_PARAMS_PARAM, Param, Rule, _split_sign, divide, forward

#: the options every rule here takes (base.py: stabiliser modes; zero_params: [bias] leaves the bias out)
OPTIONS = {"stabilizer_mode": STABILIZER_MODE, "zero_params": ZERO_PARAMS_PARAM}

class ZPlus(Rule):
    name = "zplus"
    overwrites_z = False  # z is not read
    formula = "R_j = sum_k (a_j w_jk)^+ R_k / sum_j (a_j w_jk)^+   (alpha=1, beta=0; z+ = W+ a+ + W- a- + b+)"
    params = {"stabilizer": Param(1e-6, "added to the denominator", minimum=0.0), **OPTIONS}
    inherits = ("stabilizer", *OPTIONS)

    def weighted(self, node, a, z, relevance, ledger=None):
        del z  # not needed: free it (the walk handed over the only reference)
        eps = self.stabiliser(node)
        w_pos, b_pos = self.modified(node, "w+"), self.bias_of(node, "b+")
        a_pos, a_neg = _split_sign(a)
        z_pos = forward(node, a_pos, w_pos, b_pos)
        if a_neg is not None:
            z_pos = z_pos + forward(node, a_neg, self.modified(node, "w-"), None)
        s = divide(relevance, z_pos, eps, reuse=ledger is None)
        if ledger is not None:
            ledger.record(s, z_pos, b_pos, eps)
        del z_pos, relevance
        result = transpose(node, s, a, w_pos).mul_(a_pos)
        if a_neg is not None:
            result.add_(transpose(node, s, a, self.modified(node, "w-")).mul_(a_neg))
        return result


class AlphaBeta(Rule):
    name = "alpha_beta"
    formula = "R_j = sum_k (alpha (a_j w_jk)^+ / sum (a w)^+  -  beta (a_j w_jk)^- / sum (a w)^-) R_k, alpha - beta = 1"
    params = {
        "alpha": Param(2.0, "weight of positive contributions", minimum=0.0),
        "beta": Param(1.0, "weight of negative contributions", minimum=0.0),
        "stabilizer": Param(1e-6, "added to the denominators", minimum=0.0),
        **OPTIONS,
    }
    inherits = ("stabilizer", *OPTIONS)

    def validate(self):
        alpha, beta = float(self.values["alpha"]), float(self.values["beta"])
        if abs((alpha - beta) - 1.0) > 1e-12:
            raise ConfigError(
                f"rule 'alpha_beta': alpha - beta must be 1 (got alpha={alpha}, beta={beta})",
                key="beta",
                hint=f"use beta = {alpha - 1:g} for alpha = {alpha:g}",
            )

    def weighted(self, node, a, z, relevance, ledger=None):
        alpha, beta = float(self.values["alpha"]), float(self.values["beta"])
        eps = self.stabiliser(node)
        a_pos, a_neg = _split_sign(a)
        if a_neg is not None:
            del z  # not needed: free it (the walk handed over the only reference)
            return self._signed_inputs(node, a, a_pos, a_neg, relevance, alpha, beta, eps, ledger)
        # Inputs a >= 0 (after ReLU): one modified forward, since W a + b = (W+ a + b+) + (W- a + b-) gives
        # z- = z - z+ (as precise as computing it: the float32 error stays at the level of the direct form).
        # Both quotients are made (in place) before the transposes, so that the relevance is freed first; all of
        # this stays in this frame, as a helper's caller would hold z and the relevance until it returned.
        reuse = ledger is None
        w_pos, b_pos = self.modified(node, "w+"), self.bias_of(node, "b+")
        z_pos = forward(node, a, w_pos, b_pos)
        z = self.unbiased(node, a, z)  # without the bias where zero_params leaves it out: W a = W+ a + W- a
        z_neg = z.sub_(z_pos) if beta != 0 else None  # in place: the walk hands over the only reference to z
        del z
        s_pos = divide(relevance, z_pos, eps, reuse=reuse)
        if ledger is not None:
            ledger.record(s_pos, z_pos, b_pos, eps, alpha)
        del z_pos
        s_neg = None
        if z_neg is not None:
            s_neg = divide(relevance, z_neg, eps, reuse=reuse)
            if ledger is not None:
                ledger.record(s_neg, z_neg, self.bias_of(node, "b-"), eps, -beta)
            del z_neg
        del relevance
        result = transpose(node, s_pos.mul_(alpha), a, w_pos)
        del s_pos
        if s_neg is not None:
            result.add_(transpose(node, s_neg.mul_(-beta), a, self.modified(node, "w-")))
        return result.mul_(a)

    def _signed_inputs(self, node, a, a_pos, a_neg, relevance, alpha, beta, eps, ledger):
        """Inputs of both signs: each share's denominator needs its own pair of modified forwards."""

        def part(w_for_pos, w_for_neg, bias, weight):
            """This sign's share: ``weight * (a+ W_for_pos^T s + a- W_for_neg^T s)`` with s = R / z_sign."""
            z_part = forward(node, a_pos, self.modified(node, w_for_pos), bias) + forward(node, a_neg, self.modified(node, w_for_neg), None)
            s = divide(relevance, z_part, eps, reuse=ledger is None)
            if ledger is not None:
                ledger.record(s, z_part, bias, eps, weight)
            del z_part
            s.mul_(weight)
            r = transpose(node, s, a, self.modified(node, w_for_pos)).mul_(a_pos)
            return r.add_(transpose(node, s, a, self.modified(node, w_for_neg)).mul_(a_neg))

        result = part("w+", "w-", self.bias_of(node, "b+"), alpha)
        if beta != 0:
            result.add_(part("w-", "w+", self.bias_of(node, "b-"), -beta))
        return result


class Gamma(Rule):
    name = "gamma"
    overwrites_z = False  # z only read: the modified denominators are new tensors
    formula = "R_j = a_j sum_k (w_jk + gamma w_jk^+) R_k / sum_j a_j (w_jk + gamma w_jk^+)   (zennit's sign-aware form)"
    params = {
        "gamma": Param(0.25, "how much positive contributions are favoured", minimum=0.0),
        "stabilizer": Param(1e-6, "added to the denominators", minimum=0.0),
        **OPTIONS,
    }
    inherits = ("gamma", "stabilizer", *OPTIONS)

    def _up_down(self, node: Node, key: str) -> torch.Tensor | None:
        """W + gamma W+ ("w_up", favours positive weights), W + gamma W- ("w_down"), and the biases alike."""
        gamma = float(self.values["gamma"])

        def make():
            param = node.weight if key.startswith("w") else self.bias_of(node)
            if param is None:
                return None
            return param + gamma * (param.clamp(min=0) if key.endswith("up") else param.clamp(max=0))

        return self.derived.get(node, key, make)

    def weighted(self, node, a, z, relevance, ledger=None):
        gamma, eps = float(self.values["gamma"]), self.stabiliser(node)
        a_pos, a_neg = _split_sign(a)
        b_up, b_down = self._up_down(node, "b_up"), self._up_down(node, "b_down")
        # where z > 0 the positive contributions count (a+ with w_up, a- with w_down); where z < 0 the negative ones.
        # Usually no relevance sits outside z > 0 (below a ReLU whose upper layer's rule multiplies by the
        # activation): then neither the z < 0 share nor masks are needed, since s is 0 wherever R is.
        masked = bool(((z <= 0) & (relevance != 0)).any())
        up, down = (z > 0, z < 0) if masked else (None, None)
        needs_down = masked and bool((down & (relevance != 0)).any())
        if a_neg is None:
            # one modified forward gives both denominators: with a >= 0, W a + b = (W+ a + b+) + (W- a + b-), so
            # z_up = z + gamma z+ and z_down = z + gamma (z - z+), where z+ = W+ a + b+ (both without the bias
            # where zero_params leaves it out; the masks above stay those of the layer's own output, as zennit's)
            z = self.unbiased(node, a, z)
            z_plus = forward(node, a, self.modified(node, "w+"), self.bias_of(node, "b+"))
            z_down = torch.sub(z, z_plus).mul_(gamma).add_(z) if needs_down else None
            z_up = z_plus.mul_(gamma).add_(z)
            del z_plus
        else:
            w_up, w_down = self._up_down(node, "w_up"), self._up_down(node, "w_down")
            z_up = forward(node, a_pos, w_up, b_up) + forward(node, a_neg, w_down, None)
            z_down = forward(node, a_pos, w_down, b_down) + forward(node, a_neg, w_up, None) if needs_down else None
        del z  # the walk handed over the only reference: free what is no longer needed, step by step
        s_up = divide(relevance, z_up, eps, reuse=ledger is None)
        if up is not None:
            s_up.masked_fill_(~up, 0.0)
        if ledger is not None:
            ledger.record(s_up, z_up, b_up, eps)
        del z_up, up
        s_down = None
        if z_down is not None:
            s_down = divide(relevance, z_down, eps, reuse=ledger is None).masked_fill_(~down, 0.0)
            if ledger is not None:
                ledger.record(s_down, z_down, b_down, eps)
            del z_down
        del relevance, down
        result = self._transposed(node, a, a_pos, a_neg, s_up, "w_up", "w_down")
        del s_up
        if s_down is not None:
            result.add_(self._transposed(node, a, a_pos, a_neg, s_down, "w_down", "w_up"))
        return result

    def _transposed(self, node, a, a_pos, a_neg, s, for_pos, for_neg):
        """``a+ * W_for_pos^T s + a- * W_for_neg^T s``."""
        result = transpose(node, s, a, self._up_down(node, for_pos)).mul_(a_pos)
        if a_neg is not None:
            result.add_(transpose(node, s, a, self._up_down(node, for_neg)).mul_(a_neg))
        return result


class Flat(Rule):
    name = "flat"
    overwrites_z = False  # z is not read
    formula = "R_j = sum_k 1 * R_k / sum_j 1   (uniform over the receptive field; inputs and weights set to 1; no bias, as zennit)"
    params = {"stabilizer": Param(1e-6, "added to the denominator", minimum=0.0), **OPTIONS}
    inherits = ("stabilizer", *OPTIONS)

    def _weight(self, node: Node) -> torch.Tensor:
        return self.derived.get(node, "ones", lambda: torch.ones_like(node.weight))

    def _bias(self, node: Node) -> torch.Tensor | None:
        return None

    def weighted(self, node, a, z, relevance, ledger=None):
        del z  # not needed: free it (the walk handed over the only reference)
        eps = self.stabiliser(node)
        weight, bias = self._weight(node), None if self.zero_bias else self._bias(node)
        # the denominator is the same for every sample: computed once per input shape, for a batch of one
        key = ("z", tuple(a.shape[1:]), a.dtype, a.device)
        z_mod = self.derived.get(node, key, lambda: forward(node, torch.ones_like(a[:1]), weight, bias))
        s = divide(relevance, z_mod, eps)
        if ledger is not None:
            ledger.record(s, z_mod.expand_as(s), bias, eps)
        del relevance  # the walk handed over the only reference
        return transpose(node, s, a, weight)


class WSquare(Flat):
    name = "wsquare"
    formula = "R_j = sum_k w_jk^2 R_k / sum_j w_jk^2   (inputs set to 1; zennit squares the bias too)"

    def _weight(self, node):
        return self.derived.get(node, "w^2", lambda: node.weight**2)

    def _bias(self, node):
        return self.derived.get(node, "b^2", lambda: None if node.bias is None else node.bias**2)


def _bound(value: Any, like: torch.Tensor) -> torch.Tensor:
    """A z^B bound (number, per-channel list, or tensor) broadcast to ``like``'s shape."""
    if isinstance(value, torch.Tensor):
        tensor = value.to(device=like.device, dtype=like.dtype)
    else:
        tensor = torch.as_tensor(value, device=like.device, dtype=like.dtype)
    if tensor.numel() == 1:
        tensor = tensor.reshape(())
    if tensor.ndim == 1 and like.ndim >= 2:
        if tensor.numel() != like.shape[1]:
            raise ConfigError(
                f"rule 'zbox': {tensor.numel()} bound values given for an input with {like.shape[1]} channels/features",
                hint="give one number, or one value per input channel",
            )
        tensor = tensor.reshape((1, -1) + (1,) * (like.ndim - 2))
    return tensor.expand_as(like)


class ZBox(Rule):
    name = "zbox"
    row_wise = False  # bounds may be given per input
    formula = "R_j = sum_k (a_j w_jk - l_j w_jk^+ - h_j w_jk^-) R_k / sum_j (...)   (z^B, inputs bounded by [low, high])"
    params = {
        "low": Param(0.0, "lowest possible input value (number or one per channel)"),
        "high": Param(1.0, "highest possible input value (number or one per channel)"),
        "stabilizer": Param(1e-6, "added to the denominator", minimum=0.0),
        **OPTIONS,
    }
    inherits = ("low", "high", "stabilizer", *OPTIONS)

    def validate(self):
        for key in ("low", "high"):
            value = self.values[key]
            items = value if isinstance(value, (list, tuple)) else [value]
            if isinstance(value, torch.Tensor):
                continue
            if not items or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
                raise ConfigError(f"rule 'zbox': {key} must be a number or a list of numbers, got {value!r}", key=key)

    def weighted(self, node, a, z, relevance, ledger=None):
        """The biases cancel in z - (l W+ + b+) - (h W- + b-), so ``zero_params: [bias]`` changes nothing here."""
        eps = self.stabiliser(node)
        w_pos, w_neg = self.modified(node, "w+"), self.modified(node, "w-")

        def bounds_term():
            """l W+ + h W- (with b+ and b-): the same for every sample, so computed once per input shape."""
            low, high = _bound(self.values["low"], a[:1]), _bound(self.values["high"], a[:1])
            return forward(node, low, w_pos, self.modified(node, "b+")) + forward(node, high, w_neg, self.modified(node, "b-"))

        z_box = z.sub_(self.derived.get(node, ("bounds", tuple(a.shape[1:]), a.dtype, a.device), bounds_term))  # z is ours
        s = divide(relevance, z_box, eps, reuse=ledger is None)
        if ledger is not None:
            ledger.record(s, z_box, None, eps)
        del z_box, z, relevance
        low, high = _bound(self.values["low"], a), _bound(self.values["high"], a)
        return a * transpose(node, s, a, node.weight) - low * transpose(node, s, a, w_pos) - high * transpose(
            node, s, a, w_neg
        )
