"""Selective state-space mixers (Mamba), captured with their input-dependent parameters held constant.

A Mamba mixer's selective SSM runs ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t``, ``y_t = C_t h_t + D x_t``, where
Δ, B and C are computed from the input by the mixer's ``x_proj`` (Δ then through ``dt_proj`` and softplus). The
recurrence is linear in ``x`` and ``h`` once Δ, Ā = exp(ΔA), B and C are fixed; through them, the input changes
the operator itself. MambaLRP (Rezaei Jafari et al., NeurIPS 2024, Sec. 4 "selective SSM"; the authors' code,
``mamba_lrp/model/mamba_huggingface.py``, detaches ``discrete_A``, ``discrete_B`` and ``C``) holds them constant,
as AttnLRP and CP-LRP hold a gate: relevance flows through ``x`` and the state only, and the scan conserves it.

While the model is captured, the output of every selective mixer's ``x_proj`` passes :func:`lrpcli::held
<lrpcli.engine.experts.held>` (a forward hook: the module and its path are unchanged). Everything computed from
it alone (Δ, the discretisation's ``exp``, Ā, B̄, C) is then of kind "meta" in the graph: no relevance, no
rule needed; the products ``Ā h``, ``B̄ x`` and ``h C`` have one live factor and scale it. The rest of MambaLRP is
the existing rules (configs/mambalrp.yaml): SiLU passes relevance unchanged, the gate ``y * silu(z)`` splits it
half/half (``uniform``), RMSNorm holds its normaliser.

Mamba-2 mixers (transformers' Mamba2, Bamba, Falcon-H1: the chunked "SSD" form) have no module whose output is
Δ, B and C: Δ is the last slice of ``in_proj``'s output, B and C slices of the convolution's. There,
:func:`hold_ssd_parameters` inserts the held op after those slices in the captured graph (and after a
``zeros_like`` of the states, the first chunk's initial state: a constant of that shape), and everything computed
from them alone becomes "meta" as above.

Hybrid models (Jamba, Bamba, Falcon-H1, GraniteMoeHybrid) decide whether their mixers mask padding with
``cache_position[0] > 0 or torch.all(attention_mask == 1)``, a check on values torch.export cannot pass. In one
forward without a cache ``cache_position[0]`` is 0, and multiplying by an all-ones mask changes nothing: while
captured, their ``_update_mamba_mask`` returns the mask as it is (:func:`plain_mamba_mask`). Mamba-2 mixers make
the same check when the model makes itself a cache (``use_cache``, on by default in eval), and Mamba-1 mixers with
a cache run their loop: models with such mixers are captured with their config's ``use_cache`` off (one forward;
the logits are the same).

transformers' Mamba-1 slow path is a Python loop over the tokens, which torch.export unrolls: capturing took
73 s for 2 layers and 128 tokens here. While captured, a Mamba (FalconMamba) mixer without a cache computes the same
recurrence a chunk of :data:`CHUNK` tokens at a time instead (:func:`chunked_mamba_forward`: within a chunk,
``h_t = sum_s exp(sum_{s<r<=t} Δ_r A) B̄_s x_s`` plus the carried state's decay, as Mamba-2's SSD computes it); the
captured graph's outputs are checked against the model's own. The decays are computed from Δ alone, so they are
held like Ā, and LRP through the chunked form is the loop's: both are the same linear map of x with held
coefficients.

Zamba's mixer (transformers' ZambaMambaMixer) is Mamba-1's run per "mamba head": its channels split into
``n_mamba_heads`` heads, each with its own x_proj, dt_proj, A and D, and x_proj is one parameter, not a module to
hook. While captured without a cache, its ``slow_forward`` is :func:`chunked_zamba_forward`: the same computation
with the heads folded into the batch and the chunked scan above, its x_proj output (Δ, B, C) passed through
lrpcli::held as Mamba's is, and the padding mask multiplied wherever one is given (the model checks
``torch.all(mask == 1)`` first, a check on values; multiplying by all ones changes nothing).

RecurrentGemma's RG-LRU (Griffin, De et al. 2024, Sec. 2.4) computes ``h_t = a_t h_{t-1} + sqrt(1 - a_t^2)
(i_t x_t)`` with an input gate ``i_t = sigmoid(W_x x_t + b_x)`` and a decay ``a_t = exp(-8 r_t softplus(Λ))``,
``r_t = sigmoid(W_a x_t + b_a)``: linear in x and h once both gates are fixed. The gates are held as MambaLRP
holds Ā and B (and as AttnLRP / CP-LRP hold a sigmoid gate, whose signal takes the relevance): while captured,
the RG-LRU runs :func:`held_rglru_forward`, transformers' forward with both sigmoids' outputs passed through
lrpcli::held, so the decay, ``sqrt(1 - a^2)`` and the gated input's factors are "meta" and relevance flows
through x and the state only. transformers' forward skips ``sqrt(1 - a^2)`` while traced (its
``is_torchdynamo_compiling()`` branch; 0.1 and more off the eager logits here): :func:`held_rglru_forward`
always takes the eager branch, and the captured graph's outputs are checked against the model's own.

The hook and the inserted ops only mark values: the captured graph computes what the model computes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Iterator

import torch

from . import experts
from .graph import Graph, Node, Ref, map_leaves
from .ops import FACTORY_OPS

#: tokens per chunk of the chunked Mamba-1 scan (a chunk holds batch x d_inner x CHUNK² x d_state decays)
CHUNK = 16
#: the mixers whose slow path :func:`chunked_mamba_forward` repeats (FalconMamba's adds weightless RMS norms of Δ, B, C)
CHUNKED = ("MambaMixer", "FalconMambaMixer")
#: the mixers' submodule whose output holds Δ, B and C (transformers' Mamba, FalconMamba and Jamba mixers)
SELECTION = "x_proj"


def is_selective_mixer(module: torch.nn.Module) -> bool:
    """A transformers Mamba-1 style mixer: a class named ``...MambaMixer`` with the SSM's ``A_log`` and a linear
    ``x_proj`` that makes Δ, B and C from the input."""
    return (
        type(module).__name__.endswith("MambaMixer")
        and isinstance(getattr(module, SELECTION, None), torch.nn.Linear)
        and isinstance(getattr(module, "A_log", None), torch.Tensor)
    )


def is_multi_head_mixer(module: torch.nn.Module) -> bool:
    """A transformers Zamba mixer: Mamba-1's, its channels split into ``n_mamba_heads`` heads, each with its own
    ``x_proj`` (one parameter, ``x_proj_weight``, not a module to hook)."""
    return (
        type(module).__name__.endswith("MambaMixer")
        and isinstance(getattr(module, "x_proj_weight", None), torch.Tensor)
        and isinstance(getattr(module, "n_mamba_heads", None), int)
    )


def is_rglru(module: torch.nn.Module) -> bool:
    """transformers' RecurrentGemma (Griffin) RG-LRU: input and recurrence gates, the log-decay's parameter and the
    scan :func:`held_rglru_forward` calls."""
    return (
        type(module).__name__.endswith("Rglru")
        and callable(getattr(module, "_rnn_scan", None))
        and all(isinstance(getattr(module, name, None), torch.Tensor) for name in ("recurrent_param", "input_gate_weight", "recurrent_gate_weight"))
    )


def _hold(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
    return torch.ops.lrpcli.held(output)


def is_ssd_mixer(module: torch.nn.Module) -> bool:
    """A transformers Mamba-2 style mixer: ``A_log`` and ``dt_bias`` per head, B and C in ``n_groups`` groups."""
    return all(hasattr(module, name) for name in ("A_log", "dt_bias", "n_groups", "ssm_state_size", "num_heads", "intermediate_size"))


class Held:
    """What :func:`held_selection` found: the Mamba-1 and Zamba mixers (held, and which of them chunked), the
    Mamba-2 mixers' sizes (for :meth:`applied`) and the RG-LRUs with their gates held, by module path."""

    def __init__(self) -> None:
        self.hooked: list[str] = []
        self.ssd: dict[str, tuple[int, int, int]] = {}  # path -> (d_inner, n_groups * d_state, heads)
        self.chunked: list[str] = []  # Mamba-1 mixers captured with the chunked scan
        self.gated: list[str] = []  # RG-LRUs captured with their gates held
        self.states: dict[str, Any] = {}  # each RG-LRU's recurrent_states before the capture (put back after)

    def applied(self, graph: Graph, model: Any = None, example: Any = None, extras: dict | None = None) -> Graph:
        """``graph`` with the Mamba-2 mixers' Δ, B and C held and a note naming every mixer held; where mixers
        were captured chunked, the graph's outputs checked against ``model``'s own on ``example``."""
        if (self.chunked or self.gated) and model is not None:
            from .patterns import check_rewrite

            if self.chunked:
                what = f"the Mamba mixers {', '.join(self.chunked)} computed a chunk at a time"
                hint = "this transformers' MambaMixer.slow_forward (or Zamba's) differs from the one lrpcli repeats (4.57); please report it"
            else:
                what = f"the RG-LRUs {', '.join(self.gated)} computed with their gates held"
                hint = ("a text longer than the model's attention_window_size is attended differently by RecurrentGemma with its cache "
                        "(lrpcli captures without it): explain shorter texts; else this transformers' RecurrentGemmaRglru.forward "
                        "differs from the one lrpcli repeats (4.57): please report it")
            check_rewrite(graph, model, example, extras, what, hint=hint)
        if self.ssd:
            graph = hold_ssd_parameters(graph, self.ssd)
        notes = [note(self.hooked + list(self.ssd))] if self.hooked or self.ssd else []
        if self.chunked:
            notes.append(f"Mamba scans captured {CHUNK} tokens at a time (outputs checked equal): {', '.join(self.chunked)}")
        if self.gated:
            notes.append(f"RG-LRU input and recurrence gates held constant (as MambaLRP holds Δ, A-bar, B, C; outputs checked equal): {', '.join(self.gated)}")
        return graph.replace(notes=graph.notes + notes)


@contextlib.contextmanager
def held_selection(model: Any) -> Iterator[Held]:
    """While open, the ``x_proj`` output of every selective mixer of ``model`` (an nn.Module) passes
    lrpcli::held (Zamba's in :func:`chunked_zamba_forward`), every RG-LRU runs :func:`held_rglru_forward`, a
    hybrid's mixer mask is the attention mask, and a model with Mamba-2 or chunked mixers makes no cache;
    yields a :class:`Held`, whose ``applied`` finishes the captured graph. The model is as it was afterwards,
    whatever happens."""
    found = Held()
    handles = []
    masked = []
    if isinstance(model, torch.nn.Module):
        for path, module in model.named_modules():
            if callable(getattr(type(module), "_update_mamba_mask", None)) and "_update_mamba_mask" not in vars(module):
                module._update_mamba_mask = plain_mamba_mask
                masked.append(module)
            if is_multi_head_mixer(module) and "slow_forward" not in vars(module):
                module.slow_forward = _chunked(module, module.slow_forward, chunked_zamba_forward)
                found.hooked.append(path)
                found.chunked.append(path)
            elif is_rglru(module) and "forward" not in vars(module):
                module.forward = functools.partial(held_rglru_forward, module)
                found.gated.append(path)
                found.states[path] = module.recurrent_states
            elif is_selective_mixer(module):
                handles.append(getattr(module, SELECTION).register_forward_hook(_hold))
                found.hooked.append(path)
                if type(module).__name__ in CHUNKED and "slow_forward" not in vars(module):
                    module.slow_forward = _chunked(module, module.slow_forward)
                    found.chunked.append(path)
            elif is_ssd_mixer(module):
                sizes = (module.intermediate_size, module.n_groups * module.ssm_state_size, module.num_heads)
                found.ssd[path] = tuple(int(size) for size in sizes)
    configs = []
    if found.ssd or found.chunked or found.gated:  # Mamba-2's cache check; a Mamba-1 cache would keep the loop; RecurrentGemma: see held_rglru_forward
        for module in model.modules():
            config = getattr(module, "config", None)
            if getattr(config, "use_cache", None) is True and not any(config is seen for seen in configs):
                config.use_cache = False
                configs.append(config)
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()
        for module in masked:
            del module._update_mamba_mask
        for path in found.chunked:
            del model.get_submodule(path).slow_forward
        for path, state in found.states.items():  # what export's forward left there (a cache's zeros) is no tensor
            module = model.get_submodule(path)
            del module.forward
            module.recurrent_states = state
        for config in configs:
            config.use_cache = True


def _chunked(mixer: torch.nn.Module, original: Any, chunked: Any = None) -> Any:
    """``mixer.slow_forward`` computed by ``chunked`` (:func:`chunked_mamba_forward` unless given) where it is
    called without a cache; Zamba's takes no ``cache_position``."""
    if chunked is not None:
        def multi_head(input_states, cache_params=None, attention_mask=None):
            if cache_params is not None:
                return original(input_states, cache_params, attention_mask)
            return chunked(mixer, input_states, attention_mask)

        return multi_head

    def slow_forward(input_states, cache_params=None, cache_position=None, attention_mask=None):
        if cache_params is not None:
            return original(input_states, cache_params, cache_position, attention_mask)
        return chunked_mamba_forward(mixer, input_states, attention_mask)

    return slow_forward


def chunked_mamba_forward(mixer: Any, input_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """transformers 4.57's ``MambaMixer.slow_forward`` (and FalconMamba's) without a cache, its loop over the tokens
    computed :data:`CHUNK` tokens at a time (see the module docstring)."""
    self = mixer
    seq_len, dtype = input_states.shape[1], input_states.dtype
    hidden_states, gate = self.in_proj(input_states).transpose(1, 2).chunk(2, dim=1)
    if attention_mask is not None:
        hidden_states = hidden_states * attention_mask.unsqueeze(1)
    hidden_states = self.act(self.conv1d(hidden_states)[..., :seq_len])
    if attention_mask is not None:
        hidden_states = hidden_states * attention_mask.unsqueeze(1)
    ssm_parameters = self.x_proj(hidden_states.transpose(1, 2))
    time_step, B, C = torch.split(ssm_parameters, [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
    if type(self).__name__ == "FalconMambaMixer":
        B, C, time_step = (_rms(t, self.rms_eps) for t in (B, C, time_step))
    discrete_time_step = torch.nn.functional.softplus(self.dt_proj(time_step)).transpose(1, 2)
    A = -torch.exp(self.A_log.float())
    log_decay = A[None, :, None, :] * discrete_time_step[:, :, :, None]  # log of discrete_A
    discrete_B = discrete_time_step[:, :, :, None] * B[:, None, :, :].float()
    deltaB_u = discrete_B * hidden_states[:, :, :, None].float()
    scan_output = _chunked_scan(log_decay, deltaB_u, C, dtype) + hidden_states * self.D[None, :, None]
    scan_output = scan_output * self.act(gate)
    return self.out_proj(scan_output.transpose(1, 2))


def _chunked_scan(log_decay: torch.Tensor, deltaB_u: torch.Tensor, C: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``y_t = C_t h_t`` of the recurrence ``h_t = exp(log_decay_t) h_{t-1} + deltaB_u_t`` from ``h_0 = 0``,
    :data:`CHUNK` tokens at a time (the module docstring): ``log_decay`` and ``deltaB_u`` are (batch, d_inner,
    tokens, d_state), ``C`` (batch, tokens, d_state); y is (batch, d_inner, tokens) in ``dtype``."""
    outputs, state = [], None
    for start in range(0, log_decay.shape[2], CHUNK):
        part = slice(start, min(start + CHUNK, log_decay.shape[2]))
        cumulative = torch.cumsum(log_decay[:, :, part], dim=2)  # (batch, d_inner, L, d_state)
        length = cumulative.shape[2]
        between = cumulative[:, :, :, None, :] - cumulative[:, :, None, :, :]  # [t, s]: the decay from s to t
        causal = torch.ones(length, length, dtype=torch.bool, device=cumulative.device).tril()[:, :, None]
        decay = torch.exp(between.masked_fill(causal.logical_not(), float("-inf")))
        states = (decay * deltaB_u[:, :, None, part]).sum(dim=3)
        if state is not None:
            states = states + torch.exp(cumulative) * state[:, :, None, :]
        state = states[:, :, -1]
        outputs.append((states.to(dtype) * C[:, None, part, :]).sum(dim=-1))
    return torch.cat(outputs, dim=-1)


def chunked_zamba_forward(mixer: Any, input_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """transformers 4.57's ``ZambaMambaMixer.slow_forward`` without a cache: Mamba's mixer run per "mamba head"
    (each head its own slice of the channels, its own x_proj, dt_proj, A and D), here the heads folded into the
    batch and scanned :data:`CHUNK` tokens at a time. Δ, B and C (the heads' x_proj output) pass lrpcli::held, as
    Mamba's do; the padding mask multiplies where one is given (by an all-ones mask that changes nothing: the
    model's ``torch.all(mask == 1)`` check is on values, which torch.export cannot pass)."""
    self = mixer
    batch, seq_len, _ = input_states.shape
    dtype, heads = input_states.dtype, self.n_mamba_heads
    hidden_states, gate = self.in_proj(input_states).transpose(1, 2).view(batch, -1, 2, seq_len).chunk(2, dim=2)
    hidden_states = hidden_states.squeeze(2).contiguous()
    gate = gate.squeeze(2).reshape(batch, heads, -1, seq_len).transpose(0, 1)
    if attention_mask is not None:
        hidden_states = hidden_states * attention_mask.unsqueeze(1)
    hidden_states = self.act(self.conv1d(hidden_states)[..., :seq_len])
    if attention_mask is not None:
        hidden_states = hidden_states * attention_mask.unsqueeze(1)
    hidden_states = hidden_states.reshape(-1, heads, self.mamba_head_dim, seq_len).transpose(0, 1)  # (heads, batch, d, L)
    ssm_parameters = torch.ops.lrpcli.held((self.x_proj_weight[:, None, :, :] @ hidden_states).transpose(-1, -2))
    time_step, B, C = torch.split(ssm_parameters, [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
    discrete_time_step = self.dt_proj_weight[:, None] @ time_step.transpose(-1, -2) + self.dt_proj_bias[:, None, :, None]
    discrete_time_step = torch.nn.functional.softplus(discrete_time_step)
    A = -torch.exp(self.A_log.float())
    log_decay = A[:, None, :, None, :] * discrete_time_step[:, :, :, :, None]  # log of discrete_A
    deltaB_u = discrete_time_step[:, :, :, :, None] * B[:, :, None, :, :].float() * hidden_states[:, :, :, :, None].float()
    folded = (heads * batch, self.mamba_head_dim, seq_len, self.ssm_state_size)
    scan_output = _chunked_scan(log_decay.reshape(folded), deltaB_u.reshape(folded), C.reshape(heads * batch, seq_len, -1), dtype)
    scan_output = scan_output.reshape(heads, batch, self.mamba_head_dim, seq_len) + hidden_states * self.D[:, None, :, None]
    scan_output = scan_output * self.act(gate)
    return self.out_proj(scan_output.transpose(0, 1).reshape(batch, -1, seq_len).transpose(1, 2))


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """FalconMamba's ``rms_forward``: an RMS norm without weight, in float32."""
    x32 = x.to(torch.float32)
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def held_rglru_forward(lru: Any, activations: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """transformers 4.57's ``RecurrentGemmaRglru.forward`` with its two gates held (see the module docstring), the
    normalisation ``sqrt(1 - a^2)`` computed as the eager model computes it (the model skips it while traced), and
    the scan started from no state: one forward from position 0, where the model's reset zeroes any state. Models
    with RG-LRUs are captured without their cache (its attention's in-place window writes were captured wrong
    beside the chunked scan: 1.5 off the model's logits; without it the logits are the model's for texts up to
    the attention window, and longer ones are refused by the check)."""
    self = lru
    batch_size, seq_len, lru_width = activations.shape
    reset = position_ids[:, :, None] == 0
    reshape_act = activations.reshape(batch_size * seq_len, self.num_attention_heads, self.block_width).permute(1, 0, 2)
    res = torch.baddbmm(self.input_gate_bias[:, None, :], reshape_act, self.input_gate_weight)
    input_gate = torch.ops.lrpcli.held(torch.sigmoid(res.transpose(0, 1).reshape(batch_size, seq_len, lru_width)))
    res = torch.baddbmm(self.recurrent_gate_bias[:, None, :], reshape_act, self.recurrent_gate_weight)
    recurrent_gate = torch.ops.lrpcli.held(torch.sigmoid(res.transpose(0, 1).reshape(batch_size, seq_len, lru_width)))
    log_recurrent_gate = -8.0 * recurrent_gate * torch.nn.functional.softplus(self.recurrent_param)
    recurrent_gate = torch.exp(log_recurrent_gate)
    a_square = torch.exp(2 * log_recurrent_gate)
    gated_inputs = activations * input_gate
    multiplier = reset + ~reset * torch.sqrt(1 - a_square)  # the eager branch (SqrtBoundDerivative's forward)
    normalized_x = gated_inputs * multiplier.type(activations.dtype)
    if seq_len > 1 and activations.dtype != torch.float64:  # float64: the loop (see _chunked_rnn_scan)
        return _chunked_rnn_scan(normalized_x, log_recurrent_gate, reset)
    hidden_states, _ = self._rnn_scan(hidden_states=normalized_x, recurrent_gate=recurrent_gate, reset=reset, recurrent_states=None)
    return hidden_states


def _chunked_rnn_scan(x: torch.Tensor, log_decay: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
    """transformers' ``RecurrentGemmaRglru._rnn_scan`` from no state, ``h_t = a_t h_{t-1} + x_t`` with ``a_t =
    exp(log_decay_t)``, 0 where ``reset`` (position 0), accumulated in float32 as the model does: :data:`CHUNK` tokens
    at a time as :func:`_chunked_scan` (the decay from s to t, ``exp(sum_{s<r<=t} log a_r)``, where no reset lies in
    between), not a graph node per token (2 layers, 128 tokens: 130 s to capture the loop, 3,207 nodes). Its rounding
    differs from the loop's by about float32's precision, which float64 models' graphs are not allowed: they keep
    the loop. ``x`` and ``log_decay`` are (batch, tokens, width), ``reset`` (batch, tokens, 1)."""
    x32 = x.type(torch.float32)
    log_decay = log_decay.type(torch.float32).masked_fill(reset, 0.0)  # a reset is a segment's start, below
    segments = torch.cumsum(reset.to(torch.int64), dim=1)  # [t]: the resets up to t
    outputs, state, last = [], None, None
    for start in range(0, x.shape[1], CHUNK):
        part = slice(start, min(start + CHUNK, x.shape[1]))
        cumulative, segment = torch.cumsum(log_decay[:, part], dim=1), segments[:, part]  # (batch, L, width), (batch, L, 1)
        length = cumulative.shape[1]
        between = cumulative[:, :, None, :] - cumulative[:, None, :, :]  # [t, s]: the decay from s to t
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()[None, :, :, None]
        joined = causal & (segment[:, :, None, :] == segment[:, None, :, :])
        states = (torch.exp(between.masked_fill(joined.logical_not(), float("-inf"))) * x32[:, None, part, :]).sum(dim=2)
        if state is not None:
            carried = torch.exp(cumulative).masked_fill(segment != last[:, None, :], 0.0)
            states = states + carried * state[:, None, :]
        state, last = states[:, -1], segment[:, -1]
        outputs.append(states)
    return torch.cat(outputs, dim=1).type(x.dtype)


def plain_mamba_mask(attention_mask: torch.Tensor | None, cache_position: torch.Tensor) -> torch.Tensor | None:
    """A hybrid model's mask for its mixers in one forward without a cache: the attention mask itself (see the
    module docstring)."""
    return attention_mask


def _slices_to_hold(graph: Graph, mixers: dict[str, tuple[int, int, int]]) -> set[str]:
    """The graph names of each Mamba-2 mixer's Δ, B and C slices, and of its ``zeros_like`` nodes."""
    holds: dict[str, set[int]] = {}  # split node -> the indices of its parts to hold
    found: set[str] = set()
    for node in graph.nodes:
        sizes = mixers.get(node.module)
        if sizes is None:
            continue
        inner, grouped, heads = sizes
        if node.op == "split_with_sizes" and len(node.args) > 1 and isinstance(node.args[1], (list, tuple)):
            parts = list(node.args[1])
            if parts == [inner, grouped, grouped]:  # hidden_states, B, C out of the convolution
                holds[node.name] = {1, 2}
            elif len(parts) >= 3 and inner in parts[:-1] and parts[-1] == heads:  # in_proj: [..., gate, xBC, dt]
                holds[node.name] = {len(parts) - 1}
        elif node.op == "getitem" and isinstance(node.args[0], Ref) and node.args[1] in holds.get(node.args[0].name, ()):
            found.add(node.name)
        elif node.op in FACTORY_OPS:
            found.add(node.name)
    return found


def hold_ssd_parameters(graph: Graph, mixers: dict[str, tuple[int, int, int]]) -> Graph:
    """Insert lrpcli::held after each Mamba-2 mixer's Δ, B and C (see the module docstring); nodes computed
    only from held values become "meta", and a product with one live factor left a scaling of it."""
    names = _slices_to_hold(graph, mixers)
    if not names:
        return graph
    taken = {node.name for node in graph.nodes}
    renamed: dict[str, str] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        node = dataclasses.replace(node, args=_renamed(node.args, renamed), kwargs=_renamed(node.kwargs, renamed))
        nodes.append(node)
        if node.name in names:
            name = node.name + "_held"
            while name in taken:
                name += "_"
            taken.add(name)
            renamed[node.name] = name
            held = dataclasses.replace(node, name=name, target=experts.held, args=(Ref(node.name),), kwargs={}, kind="meta", op="held")
            nodes.append(dataclasses.replace(held, hint=None, held=(), gates=(), gate_op=""))
    return graph.replace(nodes=_spread_meta(nodes, set(graph.extra_inputs)))


def _renamed(obj: Any, renamed: dict[str, str]) -> Any:
    return map_leaves(obj, lambda leaf: Ref(renamed[leaf.name]) if isinstance(leaf, Ref) and leaf.name in renamed else leaf)


def _spread_meta(nodes: list[Node], meta: set[str]) -> list[Node]:
    """The builder's rules for held values, again: a node that reads only meta values is meta; a product of
    one live factor and held ones scales that factor."""
    meta = meta | {node.name for node in nodes if node.kind == "meta"}
    result = []
    for node in nodes:
        refs = list(dict.fromkeys(node.refs))
        if node.kind != "meta" and refs and all(ref in meta for ref in refs):
            node = dataclasses.replace(node, kind="meta", hint=None)
        elif node.kind == "product" and node.op in ("mul", "div"):
            live = [ref for ref in refs if ref not in meta]
            if len(live) == 1 and (node.op == "mul" or node.args[0] == Ref(live[0])):
                node = dataclasses.replace(node, kind="scale")
        if node.kind == "meta":
            meta.add(node.name)
        result.append(node)
    return result


def note(paths: list[str]) -> str:
    """The graph note that says what was held."""
    return f"selective SSM parameters (Δ, A-bar = exp(ΔA), B, C) held constant (MambaLRP): {', '.join(paths)}"
