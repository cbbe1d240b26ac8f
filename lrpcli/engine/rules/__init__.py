"""LRP rules, one module per family, gathered in one registry.

- ``base``: numeric helpers, the Rule base class, cached modified parameters, the ledger
- ``epsilon``: epsilon, z (LRP-0), norm, pass: any linear node
- ``weighted``: z+, alpha-beta, gamma, flat, w², z^B: layers with weights
- ``transformer``: uniform and signal (products), taylor and constant (softmax), and the
  LayerNorm form of the epsilon rules (AttnLRP, CP-LRP)
- ``gradient``: the plain gradient and the ReLU-gradient rules (GuidedBackprop, DeconvNet, BetaSmooth)
"""

from __future__ import annotations

from typing import Any

from ...registry import Registry
from .base import Derived, Ledger, Param, Rule, divide, options_text, stabilise, stabilise_
from .epsilon import Epsilon, Norm, Pass, Z
from .gradient import BetaSmooth, DeconvNet, Gradient, GuidedBackprop
from .transformer import Constant, Signal, Taylor, Uniform
from .weighted import AlphaBeta, Flat, Gamma, WSquare, ZBox, ZPlus

__all__ = ["RULES", "Derived", "Ledger", "Param", "Rule", "divide", "make_rule", "stabilise", "stabilise_"]

RULES: Registry[type[Rule]] = Registry("rule")
RULES.register("z", Z, aliases=("lrp_0", "lrp0", "zero"))
RULES.register("epsilon", Epsilon, aliases=("eps",))
RULES.register("gamma", Gamma)
RULES.register("alpha_beta", AlphaBeta, aliases=("alphabeta",))
RULES.register("zplus", ZPlus, aliases=("z_plus", "z+"))
RULES.register("flat", Flat)
RULES.register("wsquare", WSquare, aliases=("w_square", "w2"))
RULES.register("zbox", ZBox, aliases=("z_box", "zb", "box"))
RULES.register("pass", Pass, aliases=("passthrough",))
RULES.register("norm", Norm)
RULES.register("uniform", Uniform, aliases=("uniform_epsilon", "attnlrp_product"))
RULES.register("signal", Signal, aliases=("gate", "signal_only", "signal_take_all"))
RULES.register("taylor", Taylor, aliases=("softmax_taylor",))
RULES.register("constant", Constant, aliases=("detach", "hold"))
RULES.register("gradient", Gradient, aliases=("grad",))
RULES.register("guided_backprop", GuidedBackprop, aliases=("guidedbackprop", "guided"))
RULES.register("deconvnet", DeconvNet, aliases=("deconv_net",))
RULES.register("beta_smooth", BetaSmooth, aliases=("betasmooth",))


def rules_text() -> str:
    """What ``lrp rules`` prints: every rule with its formula and parameters. The CLI prints a copy kept in
    ``rules.txt`` beside this file, so that the listing needs no torch (tests/test_registry.py holds the two
    equal; ``python -m lrpcli.engine.rules`` writes it again)."""
    lines = []
    for name in RULES.names():
        cls = RULES.get(name)
        params = ", ".join(f"{key}={spec.default!r}" for key, spec in cls.params.items()) or "-"
        lines.append(f"{name:<11} {cls.formula}\n{'':<11} parameters: {params}")
    lines.append(options_text())
    return "\n".join(lines) + "\n"


def make_rule(name: str, **values: Any) -> Rule:
    """Instantiate a rule by (any accepted spelling of) its name."""
    return RULES.get(name)(**values)
