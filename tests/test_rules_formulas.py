"""Each LRP rule of design section 2, checked against an independent NumPy transcription.

Every test builds a tiny float64 network with seeded (or hand-set) weights, negative
weights, negative inputs and biases included, assigns the rule under test to one layer
by its path (``nn.Sequential`` children are named "0", "1", ...), and compares
``explain(...).relevance`` with a NumPy reference that follows the rule's formula as
written in the literature / zennit 0.5.1 — never with numbers lrpcli produced.

Notation used by every reference below (one sample; all vectors are NumPy 1-D arrays):

    a_j        input activation of the layer (j = 1..J)
    w_jk       weight from input j to output k (torch stores it as ``W[k, j]``)
    b_k        bias of output k
    z_jk       = a_j w_jk                       the contribution of j to k
    z_k        = sum_j z_jk + b_k               the layer's pre-activation
    R_k        relevance arriving at output k
    R_j        relevance handed to input j       (what the reference returns)
    sign0(x)   = +1 for x >= 0, -1 for x < 0     (zennit's sign: sign(0) = +1)
    stab(x, e) = x + e * sign0(x)                (zennit's Stabilizer)
    x^+ = max(x, 0),  x^- = min(x, 0)

Convolutions and average pooling are written as the dense matrix of the same linear map
(built with explicit loops below), so the same dense formulas serve them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

RTOL = 1e-10
ATOL = 1e-12

# Parameters of the layers that are *not* under test are dyadic (0.25, 0.125, ...): exact in
# float32 and float64 alike, so an imprecise parameter in one rule fails that rule's tests only.
# The tests of a rule itself also use non-dyadic values (0.1, 1e-2, 0.05, 0.3, 1e-3).


# --------------------------------------------------------------------------------------
# NumPy references: one function per rule, (a, W, b, R) -> R_in
# --------------------------------------------------------------------------------------


def sign0(x):
    return np.where(x >= 0, 1.0, -1.0)


def stab(x, eps):
    return x + eps * sign0(x)


def div0(num, den):
    """num / den, with exactly 0 where den == 0 (LRP-0's convention for a zero denominator)."""
    safe = np.where(den == 0, 1.0, den)
    return np.where(den == 0, 0.0, num / safe)


def contributions(a, W):
    """z_jk = a_j w_jk, shape (J, K)."""
    return a[:, None] * W.T


def ref_z(a, W, b, R, stabilizer=None):
    """LRP-0: R_j = sum_k z_jk / z_k * R_k   (0 where z_k == 0; stab(z_k) if a stabilizer is given)."""
    zjk = contributions(a, W)
    zk = zjk.sum(axis=0) + b
    s = div0(R, zk) if stabilizer is None else R / stab(zk, stabilizer)
    return (zjk * s).sum(axis=1)


def ref_epsilon(a, W, b, R, epsilon):
    """LRP-eps: R_j = sum_k z_jk / (z_k + eps * sign0(z_k)) * R_k."""
    zjk = contributions(a, W)
    zk = zjk.sum(axis=0) + b
    return (zjk * (R / stab(zk, epsilon))).sum(axis=1)


def ref_gamma(a, W, b, R, gamma, stabilizer):
    """Generalised LRP-gamma (zennit): contributions of the same sign as z_k are amplified.

    for z_k > 0:  c_jk = z_jk + gamma * z_jk^+ ,   d_k = sum_j c_jk + b_k + gamma * b_k^+
    for z_k < 0:  c_jk = z_jk + gamma * z_jk^- ,   d_k = sum_j c_jk + b_k + gamma * b_k^-
    for z_k = 0:  nothing is propagated
    R_j = sum_k c_jk / stab(d_k) * R_k
    """
    zjk = contributions(a, W)
    zk = zjk.sum(axis=0) + b
    c_pos = zjk + gamma * np.maximum(zjk, 0)
    d_pos = c_pos.sum(axis=0) + b + gamma * np.maximum(b, 0)
    c_neg = zjk + gamma * np.minimum(zjk, 0)
    d_neg = c_neg.sum(axis=0) + b + gamma * np.minimum(b, 0)
    out = (c_pos * (R / stab(d_pos, stabilizer)) * (zk > 0)).sum(axis=1)
    out += (c_neg * (R / stab(d_neg, stabilizer)) * (zk < 0)).sum(axis=1)
    return out


def ref_alpha_beta(a, W, b, R, alpha, beta, stabilizer):
    """LRP-alpha-beta: positive and negative contributions normalised separately.

    P_k = sum_j z_jk^+ + b_k^+ ,   N_k = sum_j z_jk^- + b_k^-
    R_j = sum_k ( alpha * z_jk^+ / stab(P_k) - beta * z_jk^- / stab(N_k) ) * R_k
    """
    zjk = contributions(a, W)
    zp, zn = np.maximum(zjk, 0), np.minimum(zjk, 0)
    P = zp.sum(axis=0) + np.maximum(b, 0)
    N = zn.sum(axis=0) + np.minimum(b, 0)
    return (alpha * zp * (R / stab(P, stabilizer)) - beta * zn * (R / stab(N, stabilizer))).sum(axis=1)


def ref_zplus(a, W, b, R, stabilizer):
    """z+: R_j = sum_k z_jk^+ / stab(sum_j z_jk^+ + b_k^+) * R_k.

    (z_jk^+ = a_j^+ w_jk^+ + a_j^- w_jk^-: negative inputs count through negative weights.)
    """
    zp = np.maximum(contributions(a, W), 0)
    P = zp.sum(axis=0) + np.maximum(b, 0)
    return (zp * (R / stab(P, stabilizer))).sum(axis=1)


def ref_flat(a, W, b, R, stabilizer, connect=None):
    """flat: every connection weighs 1 and every input is 1; the bias is dropped.

    R_j = sum_k 1[j connected to k] / stab(#inputs connected to k) * R_k
    ``connect`` is the 0/1 connectivity (K, J) (all ones for a dense layer).
    """
    C = np.ones_like(W) if connect is None else connect
    den = C.sum(axis=1)
    return (C.T * (R / stab(den, stabilizer))).sum(axis=1)


def ref_wsquare(a, W, b, R, stabilizer):
    """w^2: inputs are 1, weights and bias squared.

    R_j = sum_k w_jk^2 / stab(sum_j w_jk^2 + b_k^2) * R_k
    """
    W2 = W**2
    den = W2.sum(axis=1) + b**2
    return (W2.T * (R / stab(den, stabilizer))).sum(axis=1)


def ref_zbox(a, W, b, R, low, high, stabilizer):
    """z^B: z_jk = a_j w_jk - l_j w_jk^+ - h_j w_jk^-, bias terms b - b^+ - b^- (= 0).

    z_k = (sum_j a_j w_jk + b_k) - (sum_j l_j w_jk^+ + b_k^+) - (sum_j h_j w_jk^- + b_k^-)
    R_j = sum_k z_jk / stab(z_k) * R_k
    """
    low = np.broadcast_to(np.asarray(low, dtype=float), a.shape)
    high = np.broadcast_to(np.asarray(high, dtype=float), a.shape)
    Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
    zjk = a[:, None] * W.T - low[:, None] * Wp.T - high[:, None] * Wn.T
    zk = (W @ a + b) - (Wp @ low + np.maximum(b, 0)) - (Wn @ high + np.minimum(b, 0))
    return (zjk * (R / stab(zk, stabilizer))).sum(axis=1)


def ref_pass(a, W, b, R):
    """pass: R_j = R_j (same shape in and out)."""
    assert R.shape == a.shape
    return R.copy()


def ref_norm(a, W, b, R, stabilizer):
    """norm: proportional to the input's share, z_k as the layer computes it.

    R_j = sum_k z_jk / stab(z_k) * R_k
    """
    return ref_epsilon(a, W, b, R, stabilizer)


# --------------------------------------------------------------------------------------
# Linear maps as dense matrices (explicit loops; independent of torch's conv code)
# --------------------------------------------------------------------------------------


def conv2d_matrix(weight, bias, in_shape, stride=1, padding=0):
    """Dense (K, J) matrix and bias vector of a Conv2d on a (C, H, W) input, C-H-W flattening."""
    cout, cin, kh, kw = weight.shape
    c, h, w = in_shape
    assert c == cin
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    M = np.zeros((cout * oh * ow, c * h * w))
    C = np.zeros_like(M)  # connectivity (for the flat rule)
    for co in range(cout):
        for oy in range(oh):
            for ox in range(ow):
                row = (co * oh + oy) * ow + ox
                for ci in range(cin):
                    for ky in range(kh):
                        for kx in range(kw):
                            iy = oy * stride - padding + ky
                            ix = ox * stride - padding + kx
                            if 0 <= iy < h and 0 <= ix < w:
                                col = (ci * h + iy) * w + ix
                                M[row, col] += weight[co, ci, ky, kx]
                                C[row, col] = 1.0
    b = np.zeros(cout * oh * ow) if bias is None else np.repeat(bias, oh * ow)
    return M, b, C, (cout, oh, ow)


def avgpool2d_matrix(in_shape, k):
    """Dense matrix of AvgPool2d(k) (stride k, no padding, floor mode)."""
    c, h, w = in_shape
    oh, ow = h // k, w // k
    M = np.zeros((c * oh * ow, c * h * w))
    for ci in range(c):
        for oy in range(oh):
            for ox in range(ow):
                row = (ci * oh + oy) * ow + ox
                for dy in range(k):
                    for dx in range(k):
                        M[row, (ci * h + oy * k + dy) * w + ox * k + dx] = 1.0 / (k * k)
    return M, np.zeros(M.shape[0]), (c, oh, ow)


# --------------------------------------------------------------------------------------
# A tiny NumPy LRP engine over a chain of dense maps
# --------------------------------------------------------------------------------------


def relu(z):
    return np.maximum(z, 0)


def leaky(z):
    return np.where(z > 0, z, 0.1 * z)


def ref_chain(stages, x, init="value"):
    """LRP through ``stages`` = [(M, b, rule, act)], rule(a, M, b, R) -> R_in; act None or
    an element-wise function (relevance passes element-wise nonlinearities unchanged).

    Returns (relevance shaped like x, logits (B, classes), targets (B,)).
    """
    rels, logits, targets = [], [], []
    for sample in x:
        a = sample.reshape(-1)
        inputs = []
        for M, b, _, act in stages:
            inputs.append(a)
            z = M @ a + b
            a = act(z) if act is not None else z
        t = int(np.argmax(a))
        R = np.zeros_like(a)
        R[t] = a[t] if init == "value" else 1.0
        for (M, b, rule, _), a_in in zip(reversed(stages), reversed(inputs)):
            R = rule(a_in, M, b, R)
        rels.append(R.reshape(sample.shape))
        logits.append(a)
        targets.append(t)
    return np.stack(rels), np.stack(logits), np.array(targets)


def np_params(layer):
    W = layer.weight.detach().cpu().numpy().astype(np.float64)
    b = np.zeros(W.shape[0]) if layer.bias is None else layer.bias.detach().cpu().numpy().astype(np.float64)
    return W, b


def set_params(layer, W, b=None):
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(np.asarray(W), dtype=layer.weight.dtype).reshape(layer.weight.shape))
        if b is not None:
            layer.bias.copy_(torch.as_tensor(np.asarray(b), dtype=layer.bias.dtype))


def seeded_(model, seed):
    """Overwrite every weight/bias with seeded normal values (mixed signs)."""
    rng = np.random.RandomState(seed)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            w = rng.randn(*module.weight.shape)
            b = None if module.bias is None else 0.5 * rng.randn(*module.bias.shape)
            set_params(module, w, b)
    return model


def run_explain(model, x, composite, **kw):
    from lrpcli import explain

    res = explain(model, torch.as_tensor(x, dtype=torch.float64), composite=composite, **kw)
    return res


def assert_matches(res, expected, logits, targets):
    got = res.relevance.detach().cpu().numpy()
    assert got.shape == expected.shape
    assert got.dtype == np.float64, f"float64 in, {got.dtype} out"
    np.testing.assert_allclose(res.outputs.detach().cpu().numpy(), logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(res.targets.detach().cpu().numpy(), targets)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------
# Dense rules: Linear(3,4) - act - Linear(4,2), rule under test on "0"
# --------------------------------------------------------------------------------------

X_DENSE = np.array(
    [
        [0.7, -1.3, 0.4],
        [-0.2, 0.9, -1.1],
        [1.5, 0.3, 0.8],
        [-0.6, -0.4, 1.2],
        [0.05, 1.7, -0.3],
    ]
)

# (id, rule spec for layer "0", reference for layer "0")
BOTTOM_RULES = [
    ("z", {"rule": "z"}, lambda a, W, b, R: ref_z(a, W, b, R)),
    ("z-stab", {"rule": "z", "stabilizer": 1e-2}, lambda a, W, b, R: ref_z(a, W, b, R, 1e-2)),
    ("eps-1e-6", {"rule": "epsilon", "epsilon": 1e-6}, lambda a, W, b, R: ref_epsilon(a, W, b, R, 1e-6)),
    ("eps-0.1", {"rule": "epsilon", "epsilon": 0.1}, lambda a, W, b, R: ref_epsilon(a, W, b, R, 0.1)),
    ("eps-1", {"rule": "epsilon", "epsilon": 1.0}, lambda a, W, b, R: ref_epsilon(a, W, b, R, 1.0)),
    ("eps-25", {"rule": "epsilon", "epsilon": 25.0}, lambda a, W, b, R: ref_epsilon(a, W, b, R, 25.0)),
    (
        "gamma-0.25",
        {"rule": "gamma", "gamma": 0.25, "stabilizer": 1e-6},
        lambda a, W, b, R: ref_gamma(a, W, b, R, 0.25, 1e-6),
    ),
    (
        "gamma-2-stab",
        {"rule": "gamma", "gamma": 2.0, "stabilizer": 0.05},
        lambda a, W, b, R: ref_gamma(a, W, b, R, 2.0, 0.05),
    ),
    (
        "alpha2-beta1",
        {"rule": "alpha_beta", "alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6},
        lambda a, W, b, R: ref_alpha_beta(a, W, b, R, 2.0, 1.0, 1e-6),
    ),
    (
        "alpha1-beta0",
        {"rule": "alpha_beta", "alpha": 1.0, "beta": 0.0, "stabilizer": 1e-6},
        lambda a, W, b, R: ref_alpha_beta(a, W, b, R, 1.0, 0.0, 1e-6),
    ),
    ("zplus", {"rule": "zplus", "stabilizer": 1e-6}, lambda a, W, b, R: ref_zplus(a, W, b, R, 1e-6)),
    ("zplus-stab", {"rule": "zplus", "stabilizer": 0.3}, lambda a, W, b, R: ref_zplus(a, W, b, R, 0.3)),
    ("flat", {"rule": "flat", "stabilizer": 1e-6}, lambda a, W, b, R: ref_flat(a, W, b, R, 1e-6)),
    ("wsquare", {"rule": "wsquare", "stabilizer": 1e-6}, lambda a, W, b, R: ref_wsquare(a, W, b, R, 1e-6)),
    (
        "zbox-scalar",
        {"rule": "zbox", "low": -2.0, "high": 2.0, "stabilizer": 1e-6},
        lambda a, W, b, R: ref_zbox(a, W, b, R, -2.0, 2.0, 1e-6),
    ),
    (
        "zbox-per-feature",
        {"rule": "zbox", "low": [-1.0, -2.0, -1.5], "high": [2.0, 1.0, 1.5], "stabilizer": 1e-6},
        lambda a, W, b, R: ref_zbox(a, W, b, R, [-1.0, -2.0, -1.5], [2.0, 1.0, 1.5], 1e-6),
    ),
    ("norm", {"rule": "norm", "stabilizer": 1e-3}, lambda a, W, b, R: ref_norm(a, W, b, R, 1e-3)),
]

TOP_RULES = [
    ("top-z", {"rule": "z"}, lambda a, W, b, R: ref_z(a, W, b, R)),
    ("top-eps", {"rule": "epsilon", "epsilon": 0.25}, lambda a, W, b, R: ref_epsilon(a, W, b, R, 0.25)),
]

ACTS = [("relu", nn.ReLU, relu), ("leaky", lambda: nn.LeakyReLU(0.1), leaky)]


def dense_net(seed, act_module):
    return seeded_(nn.Sequential(nn.Linear(3, 4), act_module(), nn.Linear(4, 2)), seed).double().eval()


@pytest.mark.parametrize("act_id,act_module,act_np", ACTS, ids=[a[0] for a in ACTS])
@pytest.mark.parametrize("top_id,top_spec,top_ref", TOP_RULES, ids=[t[0] for t in TOP_RULES])
@pytest.mark.parametrize("rule_id,spec,ref", BOTTOM_RULES, ids=[r[0] for r in BOTTOM_RULES])
def test_dense_rule(rule_id, spec, ref, top_id, top_spec, top_ref, act_id, act_module, act_np):
    model = dense_net(7, act_module)
    W0, b0 = np_params(model[0])
    W2, b2 = np_params(model[2])
    # The net must actually exercise both signs at the rule-under-test layer.
    pre = X_DENSE @ W0.T + b0
    assert (pre > 0).any() and (pre < 0).any() and (W0 < 0).any() and (b0 < 0).any()

    composite = {"rules": [{"match": {"name": "0"}, **spec}, {"match": {"name": "2"}, **top_spec}]}
    expected, logits, targets = ref_chain([(W0, b0, ref, act_np), (W2, b2, top_ref, None)], X_DENSE)
    res = run_explain(model, X_DENSE, composite)
    assert_matches(res, expected, logits, targets)


def test_dense_rule_one_hot_init():
    model = dense_net(11, nn.ReLU)
    W0, b0 = np_params(model[0])
    W2, b2 = np_params(model[2])
    composite = {
        "rules": [
            {"match": {"name": "0"}, "rule": "epsilon", "epsilon": 0.125},
            {"match": {"name": "2"}, "rule": "z"},
        ]
    }
    stages = [
        (W0, b0, lambda a, W, b, R: ref_epsilon(a, W, b, R, 0.125), relu),
        (W2, b2, lambda a, W, b, R: ref_z(a, W, b, R), None),
    ]
    expected, logits, targets = ref_chain(stages, X_DENSE, init="one-hot")
    res = run_explain(model, X_DENSE, composite, init="one-hot")
    assert_matches(res, expected, logits, targets)
    # and it differs from the "value" seed whenever the target logit is not 1
    value, _, _ = ref_chain(stages, X_DENSE, init="value")
    assert not np.allclose(expected, value)


def test_composite_wide_stabilizer_default():
    """``params.stabilizer`` is the default for rules that take one; ``z`` takes none unless its own."""
    model = dense_net(3, lambda: nn.LeakyReLU(0.1))
    W0, b0 = np_params(model[0])
    W2, b2 = np_params(model[2])
    composite = {
        "rules": [
            {"match": {"name": "0"}, "rule": "gamma", "gamma": 0.5},
            {"match": {"name": "2"}, "rule": "z"},
        ],
        "params": {"stabilizer": 0.25},
    }
    stages = [
        (W0, b0, lambda a, W, b, R: ref_gamma(a, W, b, R, 0.5, 0.25), leaky),
        (W2, b2, lambda a, W, b, R: ref_z(a, W, b, R), None),
    ]
    expected, logits, targets = ref_chain(stages, X_DENSE)
    res = run_explain(model, X_DENSE, composite)
    assert_matches(res, expected, logits, targets)


@pytest.mark.parametrize(
    "spec,ref",
    [
        ({"rule": "z"}, lambda a, W, b, R: ref_z(a, W, b, R)),
        ({"rule": "epsilon", "epsilon": 0.5}, lambda a, W, b, R: ref_epsilon(a, W, b, R, 0.5)),
    ],
    ids=["z", "epsilon"],
)
def test_zero_denominator(spec, ref):
    """A hidden unit with pre-activation exactly 0 but non-zero contributions (x0 - x1 with x0 == x1),
    reached by relevance through a ``flat`` top layer: LRP-0 gives it 0 (not NaN/inf), epsilon
    divides by +eps (sign(0) = +1)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    W0 = np.array([[1.0, -1.0, 0.0], [0.5, 0.2, -0.3], [-0.4, 0.8, 0.6], [0.3, -0.7, 0.9]])
    b0 = np.array([0.0, 0.1, -0.2, 0.05])
    W2 = np.array([[0.6, -0.5, 0.4, 0.7], [-0.3, 0.9, -0.2, 0.1]])
    b2 = np.array([0.1, -0.1])
    set_params(model[0], W0, b0)
    set_params(model[2], W2, b2)
    x = np.array([[0.8, 0.8, -0.5], [-1.25, -1.25, 2.0]])
    assert ((x @ W0.T + b0)[:, 0] == 0).all()
    composite = {"rules": [{"match": {"name": "0"}, **spec}, {"match": {"name": "2"}, "rule": "flat", "stabilizer": 1e-6}]}
    stages = [(W0, b0, ref, relu), (W2, b2, lambda a, W, b, R: ref_flat(a, W, b, R, 1e-6), None)]
    expected, logits, targets = ref_chain(stages, x)
    res = run_explain(model, x, composite)
    assert torch.isfinite(res.relevance).all()
    assert_matches(res, expected, logits, targets)


def test_zero_target_logit_lrp0_gives_zero_not_nan():
    """Target logit exactly 0 under LRP-0 everywhere: 0/0 must give 0 relevance, not NaN."""
    model = nn.Sequential(nn.Linear(3, 2, bias=False)).double().eval()
    set_params(model[0], [[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]])
    x = np.array([[0.5, 0.5, 3.0]])  # both logits exactly 0
    res = run_explain(model, x, {"rules": [{"match": {"type": "linear"}, "rule": "z"}]})
    assert torch.isfinite(res.relevance).all()
    np.testing.assert_array_equal(res.relevance.numpy(), np.zeros_like(x))


def test_pass_rule_on_square_linear():
    """``pass`` on Linear(4,4): the relevance at its output reaches its input unchanged."""
    model = seeded_(
        nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), 5
    ).double().eval()
    W0, b0 = np_params(model[0])
    W2, b2 = np_params(model[2])
    W4, b4 = np_params(model[4])
    composite = {
        "rules": [
            {"match": {"name": "0"}, "rule": "epsilon", "epsilon": 0.125},
            {"match": {"name": "2"}, "rule": "pass"},
            {"match": {"name": "4"}, "rule": "epsilon", "epsilon": 0.25},
        ]
    }
    stages = [
        (W0, b0, lambda a, W, b, R: ref_epsilon(a, W, b, R, 0.125), relu),
        (W2, b2, ref_pass, relu),
        (W4, b4, lambda a, W, b, R: ref_epsilon(a, W, b, R, 0.25), None),
    ]
    expected, logits, targets = ref_chain(stages, X_DENSE)
    res = run_explain(model, X_DENSE, composite)
    assert_matches(res, expected, logits, targets)
    # and pass is not epsilon in disguise on this net
    other = list(stages)
    other[1] = (W2, b2, lambda a, W, b, R: ref_epsilon(a, W, b, R, 1e-6), relu)
    assert not np.allclose(ref_chain(other, X_DENSE)[0], expected)


def test_invalid_alpha_beta_is_a_config_error():
    from lrpcli import ConfigError

    model = dense_net(7, nn.ReLU)
    composite = {
        "rules": [
            {"match": {"name": "0"}, "rule": "alpha_beta", "alpha": 2.0, "beta": 0.5},
            {"match": {"name": "2"}, "rule": "z"},
        ]
    }
    with pytest.raises(ConfigError) as info:
        run_explain(model, X_DENSE, composite)
    assert "alpha" in str(info.value).lower() or "beta" in str(info.value).lower()


# --------------------------------------------------------------------------------------
# Seed 002: the worked example (2 inputs, 4 hidden, 3 outputs)
# --------------------------------------------------------------------------------------
#
# The example gives output relevances R(o) = (0.5, 0.3, 0.2) and contributions z_jk from
# hidden h_j to output o_k with column sums z_k = (2, 1, 2); R(h1) is spelled out as
# 0.8/2*0.5 + 0.1/1*0.3 + 0.5/2*0.2 = 0.28, and R(h2..h4) = 0.27, 0.245, 0.205.
# The other rows of Z are not given; these satisfy every stated number (checked below):
SEED_Z = np.array(
    [
        [0.8, 0.1, 0.5],  # h1 (from the example)
        [0.6, 0.2, 0.6],  # h2: 0.6/2*.5 + .2*.3 + .6/2*.2 = 0.27
        [0.4, 0.35, 0.4],  # h3: 0.4/2*.5 + .35*.3 + .4/2*.2 = 0.245
        [0.2, 0.35, 0.5],  # h4: 0.2/2*.5 + .35*.3 + .5/2*.2 = 0.205
    ]
)
# The public API seeds relevance at one logit, so the three output relevances are produced
# by one more bias-free linear unit f = 0.25 o1 + 0.3 o2 + 0.1 o3: with o = (2, 1, 2), its
# contributions are (0.5, 0.3, 0.2) and f = 1.0, so init="value" and LRP-0 hand o exactly
# R(o) = (0.5, 0.3, 0.2). With every hidden activation h_j = 1, w_jk = z_jk.
# The input hop: h1 = 0.6 x1 + 0.4 x2 at x = (1, 1) gives the example's Z(x1,h1) = 0.6,
# Z(x2,h1) = 0.4 (so R(x1) from h1 = 0.168, R(x2) from h1 = 0.112); h2..h4 are ours.
SEED_W_IN = np.array([[0.6, 0.4], [0.5, 0.5], [0.3, 0.7], [0.9, 0.1]])  # rows: h1..h4
SEED_R_HIDDEN = np.array([0.28, 0.27, 0.245, 0.205])
SEED_R_INPUT = np.array(
    [
        0.6 * 0.28 + 0.5 * 0.27 + 0.3 * 0.245 + 0.9 * 0.205,  # 0.168 + 0.135 + 0.0735 + 0.1845 = 0.561
        0.4 * 0.28 + 0.5 * 0.27 + 0.7 * 0.245 + 0.1 * 0.205,  # 0.112 + 0.135 + 0.1715 + 0.0205 = 0.439
    ]
)

SEED_COMPOSITES = [
    "lrp_0",
    {"rules": [{"match": {"type": "linear"}, "rule": "z"}]},
    {"rules": [{"match": {"type": "linear"}, "rule": "epsilon", "epsilon": 0.0}]},
]


def seed_nets():
    upper = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False)).double().eval()
    set_params(upper[0], SEED_Z.T)  # W[k, j] = z_jk (h_j = 1)
    set_params(upper[2], [[0.25, 0.3, 0.1]])
    full = nn.Sequential(
        nn.Linear(2, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False)
    ).double().eval()
    set_params(full[0], SEED_W_IN)
    set_params(full[2], SEED_Z.T)
    set_params(full[4], [[0.25, 0.3, 0.1]])
    return upper, full


def test_seed_002_numbers_are_self_consistent():
    assert np.allclose(SEED_Z.sum(axis=0), [2.0, 1.0, 2.0])
    R_o = np.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose((SEED_Z / SEED_Z.sum(axis=0) * R_o).sum(axis=1), SEED_R_HIDDEN, atol=1e-15)
    np.testing.assert_allclose(SEED_W_IN.sum(axis=1), np.ones(4))
    np.testing.assert_allclose(SEED_R_INPUT, [0.561, 0.439], atol=1e-15)
    # the NumPy LRP-0 reference agrees with the hand numbers
    upper, full = seed_nets()
    stages = [(*np_params(upper[0]), ref_z, relu), (*np_params(upper[2]), ref_z, None)]
    np.testing.assert_allclose(ref_chain(stages, np.ones((1, 4)))[0][0], SEED_R_HIDDEN, atol=1e-15)


@pytest.mark.parametrize("composite", SEED_COMPOSITES, ids=["lrp_0", "z", "epsilon0"])
def test_seed_002_hidden_relevance(composite):
    upper, _ = seed_nets()
    res = run_explain(upper, np.ones((1, 4)), composite)
    np.testing.assert_allclose(res.outputs.numpy(), [[1.0]], rtol=1e-14)
    np.testing.assert_allclose(res.relevance.numpy()[0], SEED_R_HIDDEN, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("composite", SEED_COMPOSITES, ids=["lrp_0", "z", "epsilon0"])
def test_seed_002_input_relevance(composite):
    _, full = seed_nets()
    res = run_explain(full, np.ones((1, 2)), composite, layer_relevance=True)
    np.testing.assert_allclose(res.relevance.numpy()[0], SEED_R_INPUT, rtol=1e-12, atol=1e-14)
    # every layer passes on the whole 1.0 (bias-free, LRP-0)
    by_module = {layer.module: layer for layer in res.layers.values()}
    for path in ("0", "2", "4"):
        np.testing.assert_allclose(by_module[path].relevance_out.numpy(), [1.0], rtol=1e-12)
        np.testing.assert_allclose(by_module[path].relevance_in.numpy(), [1.0], rtol=1e-12)


# --------------------------------------------------------------------------------------
# Convolutions (and average pooling) through their dense matrices
# --------------------------------------------------------------------------------------

CONV_IN = (2, 5, 5)
LOWS = [-1.0, -2.0]
HIGHS = [1.5, 0.5]


def conv_net():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(27, 3))
    return seeded_(model, 13).double().eval()


def conv_input():
    rng = np.random.RandomState(17)
    return rng.uniform(-1.0, 0.5, size=(3,) + CONV_IN)  # within [LOWS, HIGHS] per channel


CONV_RULES = [
    ("epsilon", {"rule": "epsilon", "epsilon": 0.01}, lambda M, b, C: lambda a, _W, _b, R: ref_epsilon(a, M, b, R, 0.01)),
    ("epsilon-1e-6", {"rule": "epsilon", "epsilon": 1e-6}, lambda M, b, C: lambda a, _W, _b, R: ref_epsilon(a, M, b, R, 1e-6)),
    ("zplus", {"rule": "zplus", "stabilizer": 1e-6}, lambda M, b, C: lambda a, _W, _b, R: ref_zplus(a, M, b, R, 1e-6)),
    (
        "gamma",
        {"rule": "gamma", "gamma": 0.25, "stabilizer": 1e-6},
        lambda M, b, C: lambda a, _W, _b, R: ref_gamma(a, M, b, R, 0.25, 1e-6),
    ),
    ("flat", {"rule": "flat", "stabilizer": 1e-6}, lambda M, b, C: lambda a, _W, _b, R: ref_flat(a, M, b, R, 1e-6, C)),
    (
        "zbox-per-channel",
        {"rule": "zbox", "low": LOWS, "high": HIGHS, "stabilizer": 1e-6},
        lambda M, b, C: lambda a, _W, _b, R: ref_zbox(
            a, M, b, R, np.repeat(LOWS, 25), np.repeat(HIGHS, 25), 1e-6
        ),
    ),
]


@pytest.mark.parametrize("rule_id,spec,make_ref", CONV_RULES, ids=[r[0] for r in CONV_RULES])
def test_conv_rule(rule_id, spec, make_ref):
    model = conv_net()
    conv, lin = model[0], model[3]
    M, b, C, _ = conv2d_matrix(
        conv.weight.detach().numpy(), conv.bias.detach().numpy(), CONV_IN, stride=2, padding=1
    )
    W3, b3 = np_params(lin)
    x = conv_input()
    composite = {
        "rules": [
            {"match": {"name": "0"}, **spec},
            {"match": {"name": "3"}, "rule": "epsilon", "epsilon": 0.25},
        ]
    }
    stages = [
        (M, b, make_ref(M, b, C), relu),
        (W3, b3, lambda a, W, bb, R: ref_epsilon(a, W, bb, R, 0.25), None),
    ]
    expected, logits, targets = ref_chain(stages, x)
    res = run_explain(model, x, composite)
    assert_matches(res, expected, logits, targets)


def test_norm_on_avgpool():
    """``norm`` on AvgPool2d(2) over a 5x5 map: z is the pooled mean (as the layer computes it),
    R_j = a_j * (1/4) * R_k / stab(z_k); the dropped last row/column gets nothing."""
    model = seeded_(
        nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 2)), 23
    ).double().eval()
    conv, lin = model[0], model[4]
    Mc, bc, _, shape = conv2d_matrix(conv.weight.detach().numpy(), conv.bias.detach().numpy(), CONV_IN, padding=1)
    Mp, bp, _ = avgpool2d_matrix(shape, 2)
    W4, b4 = np_params(lin)
    x = conv_input()
    composite = {
        "rules": [
            {"match": {"name": "0"}, "rule": "epsilon", "epsilon": 0.125},
            {"match": {"name": "2"}, "rule": "norm", "stabilizer": 0.0078125},
            {"match": {"name": "4"}, "rule": "z"},
        ]
    }
    stages = [
        (Mc, bc, lambda a, W, b, R: ref_epsilon(a, W, b, R, 0.125), relu),
        (Mp, bp, lambda a, W, b, R: ref_norm(a, W, b, R, 0.0078125), None),
        (W4, b4, lambda a, W, b, R: ref_z(a, W, b, R), None),
    ]
    expected, logits, targets = ref_chain(stages, x)
    res = run_explain(model, x, composite)
    assert_matches(res, expected, logits, targets)


# --------------------------------------------------------------------------------------
# The references themselves (no lrpcli): guard the yardstick
# --------------------------------------------------------------------------------------


def test_reference_conv_matrix_matches_torch():
    model = conv_net()
    conv = model[0]
    x = conv_input()
    M, b, _, shape = conv2d_matrix(conv.weight.detach().numpy(), conv.bias.detach().numpy(), CONV_IN, 2, 1)
    want = conv(torch.as_tensor(x)).detach().numpy().reshape(len(x), -1)
    np.testing.assert_allclose(x.reshape(len(x), -1) @ M.T + b, want, rtol=1e-12, atol=1e-12)
    Mp, _, pshape = avgpool2d_matrix(CONV_IN, 2)
    want = nn.AvgPool2d(2)(torch.as_tensor(x)).numpy().reshape(len(x), -1)
    np.testing.assert_allclose(x.reshape(len(x), -1) @ Mp.T, want, rtol=1e-12, atol=1e-12)


def test_reference_identities():
    rng = np.random.RandomState(0)
    a, W, b, R = rng.randn(6), rng.randn(4, 6), rng.randn(4), rng.randn(4)
    W0 = np.zeros(4)
    # LRP-0 conserves without bias; epsilon(0) == z away from zero denominators
    assert np.isclose(ref_z(a, W, W0, R).sum(), R.sum(), rtol=1e-12)
    np.testing.assert_allclose(ref_epsilon(a, W, b, R, 0.0), ref_z(a, W, b, R), rtol=1e-12)
    # alpha=1, beta=0 is z+
    np.testing.assert_allclose(ref_alpha_beta(a, W, b, R, 1.0, 0.0, 1e-6), ref_zplus(a, W, b, R, 1e-6), rtol=1e-12)
    # gamma=0 is LRP-eps with the stabilizer
    np.testing.assert_allclose(ref_gamma(a, W, b, R, 0.0, 1e-6), ref_epsilon(a, W, b, R, 1e-6), rtol=1e-12)
    # z+ and alpha-beta conserve when the bias is zero (and the stabilizer tiny)
    assert np.isclose(ref_zplus(a, W, W0, R, 1e-15).sum(), R.sum(), rtol=1e-12)
    # alpha-beta: a unit hands on alpha*R_k if it has positive contributions, minus beta*R_k if negative ones
    zjk = contributions(a, W)
    has_pos, has_neg = (zjk > 0).any(axis=0), (zjk < 0).any(axis=0)
    assert not has_neg.all()  # this draw includes a unit with only positive contributions
    want = ((2.0 * has_pos - 1.0 * has_neg) * R).sum()
    assert np.isclose(ref_alpha_beta(a, W, W0, R, 2.0, 1.0, 1e-15).sum(), want, rtol=1e-12)
    # flat and w^2 ignore the input and conserve
    np.testing.assert_allclose(ref_flat(a, W, b, R, 0.0), np.full(6, R.sum() / 6), rtol=1e-12)
    assert np.isclose(ref_wsquare(-3 * a, W, W0, R, 0.0).sum(), R.sum(), rtol=1e-12)
    # z^B with an unbounded-below box (low=high=0) reduces to LRP-0 without bias
    np.testing.assert_allclose(ref_zbox(a, W, b, R, 0.0, 0.0, 1e-9), ref_z(a, W, W0, R, 1e-9), rtol=1e-10)


@pytest.mark.parametrize("rule", ["epsilon", "z", "norm"])
def test_float64_parameters_are_not_rounded_to_float32(rule):
    """Minimal: one weight, one input. R = a w * z / (z + 0.1) with z = a w = 1, so R = 1/1.1.
    0.1 rounded to float32 (0.100000001490116...) would give a relative error of ~1.2e-9."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False)).double().eval()
    set_params(model[0], [[1.0]])
    key = "epsilon" if rule == "epsilon" else "stabilizer"
    res = run_explain(model, np.ones((1, 1)), {"rules": [{"match": {"name": "0"}, "rule": rule, key: 0.1}]})
    got = res.relevance.item()
    assert abs(got - 1.0 / 1.1) <= 1e-15, f"{rule}: {got!r} != {1.0 / 1.1!r} (0.1 used as float32?)"
