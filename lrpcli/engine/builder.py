"""fx GraphModule (of an ExportedProgram) -> :class:`~lrpcli.engine.graph.Graph`: each ATen node translated,
constants folded, weighted layers and norms brought into one form, each node given its kind."""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
import torch.fx

from . import casts, fourier, ids, ops, softmaxes
from ..errors import ModelError, UnsupportedOpError
from .experts import held
from .graph import Graph, Node, Ref, _walk, channel_affine, complex_mul


#: ops that may regroup or reorder the elements of a dim merged from the batch and another (batch * windows): after
#: them the samples are its outer part only where they were at dim 0 before and still are (see _batch_dim)
_REGROUPS = {
    "view", "reshape", "_unsafe_view", "flatten", "unflatten", "view_as", "reshape_as", "as_strided", "pixel_shuffle",
    "pixel_unshuffle", "channel_shuffle", "unfold", "roll", "flip", "gather", "index", "index_select", "take_along_dim",
}

#: ops that draw random numbers: a forward that reads one changes from call to call (see _random_draw)
_RANDOM = {
    "rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "normal", "uniform", "bernoulli",
    "multinomial", "poisson", "exponential", "geometric", "cauchy", "log_normal", "random",
}

_MODULE_TYPE_BY_OP = {
    "conv1d": "Conv1d",
    "conv2d": "Conv2d",
    "conv3d": "Conv3d",
    "conv_transpose1d": "ConvTranspose1d",
    "conv_transpose2d": "ConvTranspose2d",
    "conv_transpose3d": "ConvTranspose3d",
    "linear": "Linear",
    "addmm": "Linear",
    "mm": "Linear",
    "matmul": "Linear",
}


def _module_of(fx_node: torch.fx.Node) -> tuple[str, str]:
    stack = fx_node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, type_name = list(stack.values())[-1]
    type_name = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    if "<locals>" in type_name or path.startswith("_empty"):  # TorchScript converter's wrapper
        return "", ""
    return path, type_name.rsplit(".", 1)[-1]


class _Builder:
    """Turns an fx GraphModule (from ExportedProgram.module()) into a Graph."""

    def __init__(self, gm: torch.fx.GraphModule, source: str):
        self.gm = gm
        self.source = source
        self.consts: dict[str, Any] = {}  # fx name -> tensor or python value
        self.const_origin: dict[str, str] = {}  # fx name -> parameter path ("features.0.weight")
        self.alias: dict[str, str] = {}  # fx name -> node name whose value it is
        self.nodes: list[Node] = []
        self.live: set[str] = set()  # names whose value depends on the input
        self.integral: dict[str, bool] = {}  # live names whose values are integers or booleans (ids, masks, indices)
        self.batch_dims: dict[str, int | None] = {}  # fx name -> the dim of its output that holds the samples
        self.meta: set[str] = set()  # live names that only carry sizes (sym_size and arithmetic on it)
        self.id_views: set[str] = set()  # the input ids and what carries them (ids.carries): an embedding of these is the input
        self.extra_inputs: tuple[str, ...] = ()
        self.model_storages: set[int] = set()  # storages of the model's parameters, buffers and constants: never written

    def build(self, extras: bool = False, explained: int = 1) -> Graph:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if explained > 1 and len(placeholders) < explained:
            raise ModelError(f"the model takes {len(placeholders)} input(s); {explained} were given to explain")
        more = placeholders[1:explained]  # further explained inputs: live, each a start of token ids' views too
        for extra in more:
            self.live.add(extra.name)
            self._note_dtype(extra)
            self.id_views.add(extra.name)
        placeholders = placeholders[:1] + placeholders[explained:]
        if extras and placeholders:  # the explained inputs come first; the others carry no relevance
            for extra in placeholders[1:]:
                self.live.add(extra.name)
                self.meta.add(extra.name)
                self._note_dtype(extra)
            self.extra_inputs = tuple(p.name for p in placeholders[1:])
            placeholders = placeholders[:1]
        if len(placeholders) != 1:
            raise ModelError(
                f"the model takes {len(placeholders) + len(self.extra_inputs) + explained - 1} inputs; {explained} given",
                hint="give them all as a tuple, explain(model, (x1, x2)), to explain each, or hold some with inputs={name: tensor}",
            )
        inp = placeholders[0]
        self.live.add(inp.name)
        self._note_dtype(inp)
        self.id_views.add(inp.name)
        val = inp.meta.get("val")
        shape = tuple(val.shape) if val is not None else ()
        shape = tuple(int(s) if isinstance(s, torch.SymInt) and s.node.expr.is_number else s for s in shape)  # specialised by export (Longformer's len(indices))
        dynamic = bool(shape) and not isinstance(shape[0], int)
        self.batch_symbol = shape[0].node.expr if dynamic and isinstance(shape[0], torch.SymInt) else None
        self.batch_dims[inp.name] = 0
        for extra in more:
            self.batch_dims[extra.name] = 0
        input_shape = tuple(int(s) if isinstance(s, int) else -1 for s in shape)
        output_name = None
        _inline_wrapped_blocks(self.gm)
        _write_out_glu(self.gm)
        _write_out_addcmul(self.gm)
        _write_out_complex_rotations(self.gm)
        fourier.write_out_real_dfts(self.gm)
        fourier.write_out_fft_convolutions(self.gm)
        casts.write_out_type_as(self.gm)
        softmaxes.fold_written_softmaxes(self.gm)
        for fx_node in self.gm.graph.nodes:
            if fx_node.op == "get_attr":
                self.consts[fx_node.name] = _get_attr(self.gm, fx_node.target)
                self.const_origin[fx_node.name] = str(fx_node.target)
                if isinstance(self.consts[fx_node.name], torch.Tensor):
                    self.model_storages.add(self.consts[fx_node.name].untyped_storage().data_ptr())
            elif fx_node.op == "call_function":
                self._add(fx_node)
            elif fx_node.op == "call_module":
                continue  # export's _guards_fn: shape guards, no data
            elif fx_node.op == "output":
                outputs = fx_node.args[0]
                if isinstance(outputs, (tuple, list)):
                    if len(outputs) != 1:
                        raise ModelError(
                            f"the model returns {len(outputs)} outputs; lrpcli explains one output tensor",
                            hint="wrap the model so that forward returns only the logits",
                        )
                    outputs = outputs[0]
                if not isinstance(outputs, torch.fx.Node) or outputs.name not in self.live:
                    raise ModelError("the model's output does not depend on its input")
                output_name = self.alias.get(outputs.name, outputs.name)
        assert output_name is not None
        return Graph(
            input=inp.name,
            nodes=self.nodes,
            output=output_name,
            source=self.source,
            input_shape=input_shape,
            dynamic_batch=dynamic,
            extra_inputs=self.extra_inputs,
            more_inputs=tuple(p.name for p in more),
        )

    # -- helpers

    def _arg(self, obj: Any) -> Any:
        if isinstance(obj, torch.fx.Node):
            name = self.alias.get(obj.name, obj.name)
            if name in self.live:
                return Ref(name)
            if name in self.consts:
                return self.consts[name]
            raise ModelError(f"graph node '{obj.name}' is used before it is defined")
        if isinstance(obj, tuple):
            return tuple(self._arg(item) for item in obj)
        if isinstance(obj, list):
            return [self._arg(item) for item in obj]
        if isinstance(obj, dict):
            return {key: self._arg(item) for key, item in obj.items()}
        return obj

    def _origin_module(self, weight_arg: Any) -> str:
        if isinstance(weight_arg, torch.fx.Node):
            origin = self.const_origin.get(weight_arg.name, "")
            if origin:
                return origin.rsplit(".", 1)[0] if "." in origin else ""
        return ""

    def _add(self, fx_node: torch.fx.Node) -> None:
        target = ops.out_of_place(fx_node.target)
        if ops.op_name(target) == "held":  # lrpcli::held (experts.py): the graph calls the identity, kind "meta"
            target = held
        if target is torch.ops.aten.view.default:
            # reshape is view where a view is possible; the engine's decompositions (attention) may hand a view
            # a tensor laid out differently from the fused op the model was traced with
            target = torch.ops.aten.reshape.default
        args = self._arg(fx_node.args)
        kwargs = self._arg(dict(fx_node.kwargs))
        deps: list[str] = []
        _walk(args, deps)
        _walk(kwargs, deps)
        if deps and self._fresh_constant(fx_node, args, deps):
            return
        if ops.op_name(target) in _RANDOM and fx_node.users:
            raise _random_draw(fx_node)
        if not deps:  # constant subgraph (e.g. a transposed weight): fold it now
            self.consts[fx_node.name] = self._fold(fx_node, target, args, kwargs)
            self.const_origin[fx_node.name] = self._const_origin_of(fx_node)
            return
        self.live.add(fx_node.name)
        self._note_dtype(fx_node)
        op_name = ops.op_name(fx_node.target)
        kind = ops.kind_of(fx_node.target)
        carried = ids.carries(ops.op_name(target), args, deps, self.id_views, self.meta, self.integral.get(fx_node.name, False))
        if all(dep in self.meta for dep in deps):
            kind = "meta"  # arithmetic on sizes only (a traced 1/sqrt(head_dim)): no data
        elif carried == "map":
            kind = "elementwise"  # an id to another in its place (CANINE's hash): relevance stays in place
        elif kind != "embedding" and not carried and self._reads_only_ids(fx_node, deps):
            kind = "meta"  # a mask or count made from the token ids ((ids != pad).float().sum(1)): no relevance
        if kind == "meta":
            self.meta.add(fx_node.name)
        module, module_type = _module_of(fx_node)
        node = Node(
            batch_dim=self._batch_dim(fx_node),
            name=fx_node.name,
            target=target,
            kind=kind,
            args=tuple(args),
            kwargs=kwargs,
            module=module,
            module_type=module_type,
            op=op_name,
        )
        if carried and kind in ("route", "elementwise"):
            self.id_views.add(fx_node.name)
        if kind in ("conv", "linear", "batchnorm"):
            # the weight's parameter name says which layer owns it; TorchScript graphs have nothing else
            weight_fx = fx_node.args[2] if op_name == "addmm" else fx_node.args[1] if len(fx_node.args) > 1 else None
            origin = self._origin_module(weight_fx)
            if origin and origin != node.module:
                node.module, node.module_type = origin, ""
            node = self._normalise_weighted(node, fx_node)
        elif kind == "scale":
            node = self._check_scale(node)
        elif kind == "layernorm":
            node = self._normalise_norm(node)
        elif kind == "embedding":
            node = self._check_embedding(node)
        elif kind is None:
            node.hint = _unsupported_hint(op_name)
        if not node.module_type:
            node.module_type = _guess_module_type(node)
        if node.kind != "embedding" and not self.integral.get(node.name):
            # masks and indices (int/bool) read by a float op carry no relevance: held, whatever the rule
            # (int ops on the ids themselves, such as a view before the embedding, pass relevance on)
            integral = tuple(dict.fromkeys(ref for ref in node.refs if self.integral.get(ref)))
            if integral:
                node = dataclasses.replace(node, held=tuple(dict.fromkeys(node.held + integral)))
        if fx_node.target is operator.getitem:
            source = fx_node.args[0]
            source_name = self.alias.get(source.name, source.name)
            src_node = self._find(source_name)
            if src_node is not None and src_node.kind in ("batchnorm", "layernorm") and fx_node.args[1] == 0:
                self.alias[fx_node.name] = source_name  # getitem(batch_norm(...), 0) is the output itself
                self.live.discard(fx_node.name)
                return
        self.nodes.append(node)

    def _reads_only_ids(self, fx_node: torch.fx.Node, deps: list[str]) -> bool:
        """Does this op compute from integer values only (ids, masks, indices; meta values aside)? Then its
        result is no activation either, whatever its dtype. (What carries the ids to an embedding, ids.carries,
        is asked first: it stays live, for the ids' relevance is collected there.)"""
        return all(dep in self.meta or self.integral.get(dep, False) for dep in deps)

    def _fresh_constant(self, fx_node: torch.fx.Node, args: tuple, deps: list[str]) -> bool:
        """``x.new_zeros(size)`` with a fixed size: a new constant that reads only x's dtype, not its data.

        Swin builds its shift mask this way and fills it in place; the fills are folded onto it (see _fold).
        A size that follows the batch (or any other live value) keeps the op live.
        """
        op = ops.op_name(fx_node.target)
        if not (op.startswith("new_") and op in ops.FACTORY_OPS) or deps != [args[0].name]:
            return False
        template = fx_node.args[0].meta.get("val")
        if template is None:
            return False
        value = fx_node.target(torch.empty((), dtype=template.dtype), *args[1:], **self._arg(dict(fx_node.kwargs)))
        self.consts[fx_node.name] = value
        return True

    def _fold(self, fx_node: torch.fx.Node, target: Any, args: tuple, kwargs: dict) -> Any:
        """The value of an op on constants only.

        An in-place op on (a view of) a constant made by the model itself (``mask[h0:h1, w0:w1] = count``,
        ProphetNet's ``(ones(...) * min)[i].triu_(1)``: any tensor the model computes, not only a ``new_zeros``)
        is applied in place, as in the model, so the fills reach the tensor later nodes read. A parameter or
        buffer of the model (or a view of one) is never written: there the op runs out of place.
        """
        first = args[0] if args else None
        if (
            ops.is_inplace(fx_node.target)
            and isinstance(first, torch.Tensor)
            and first.untyped_storage().data_ptr() not in self.model_storages
        ):
            return fx_node.target(*args, **kwargs)
        return target(*args, **kwargs)  # views (slice, view) of a fresh constant share its storage

    def _note_dtype(self, fx_node: torch.fx.Node) -> None:
        val = fx_node.meta.get("val")
        if isinstance(val, torch.Tensor):
            self.integral[fx_node.name] = not (val.is_floating_point() or val.is_complex())

    def _batch_dim(self, fx_node: torch.fx.Node) -> int | None:
        """The dim of the node's output that holds the samples, for per-sample totals: the dim whose size is
        the input's symbolic batch size. A dim merged from the batch and another one (batch * windows, batch *
        heads) counts only where the samples are its outer part: the node's input had them first, or had the
        same merged dim and the op moved it (a window attention's permute or unbind of q, k, v), not regrouped
        it (a reshape); else None (unknown: the node's totals are left out of the per-layer ledger). A tuple
        output (unbind, split) has its first part's."""
        val = _first_tensor(fx_node.meta.get("val"))
        if self.batch_symbol is None or val is None:
            return 0
        for index, size in enumerate(val.shape):
            if not isinstance(size, torch.SymInt) or self.batch_symbol not in size.node.expr.free_symbols:
                continue
            if size.node.expr == self.batch_symbol:
                self.batch_dims[fx_node.name] = index
                return index
            first = next((a for a in fx_node.all_input_nodes if a.name in self.batch_dims), None)
            at = None if first is None else self.batch_dims[first.name]
            outer = index == 0 and at == 0
            if not outer and at is not None and ops.op_name(fx_node.target) not in _REGROUPS:
                source = _first_tensor(first.meta.get("val"))
                outer = source is not None and at < source.ndim and _same_size(source.shape[at], size)
            self.batch_dims[fx_node.name] = index if outer else None
            return index if outer else None
        return 0

    def _find(self, name: str) -> Node | None:
        for node in reversed(self.nodes):
            if node.name == name:
                return node
        return None

    def _const_origin_of(self, fx_node: torch.fx.Node) -> str:
        for arg in fx_node.all_input_nodes:
            origin = self.const_origin.get(arg.name)
            if origin:
                return origin
        return ""

    def _normalise_weighted(self, node: Node, fx_node: torch.fx.Node) -> Node:
        """Bring conv/linear/batch-norm into the (input, weight, bias, ...) form rules expect."""
        args = list(node.args)
        name = node.op
        if node.kind == "linear":
            if name == "linear":
                x, weight, bias = (args + [None, None])[:3]
            elif name == "addmm":
                bias, x, weight_t = args[:3]
                weight = weight_t.t() if isinstance(weight_t, torch.Tensor) else weight_t
                if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                    return self._unsupported(node, "addmm with alpha/beta is not supported")
            else:  # mm, matmul: x @ W
                x, weight_t = args[:2]
                if isinstance(x, Ref) and isinstance(weight_t, Ref):
                    return dataclasses.replace(node, kind="product")  # two activations (attention's Q K^T, A V)
                if constant_product(x, weight_t):
                    return dataclasses.replace(node, kind="product")
                weight = weight_t.t() if isinstance(weight_t, torch.Tensor) and weight_t.ndim == 2 else None
                bias = None
            if not isinstance(x, Ref) or not isinstance(weight, torch.Tensor) or isinstance(bias, Ref):
                return self._unsupported(
                    node,
                    f"'{name}' multiplies two activations (or a constant on the left); "
                    "LRP rules need one activation times a constant weight matrix",
                )
            return dataclasses.replace(node, target=torch.ops.aten.linear.default, args=(x, weight, bias), kwargs={})
        if node.kind == "conv":
            while len(args) < 3:
                args.append(None)
            if not isinstance(args[0], Ref) or isinstance(args[1], Ref) or isinstance(args[2], Ref):
                return self._unsupported(node, "convolution with a weight computed from the input")
            return dataclasses.replace(node, args=tuple(args))
        # batch-norm (eval): fold running statistics into one per-channel affine map
        if name == "batch_norm":
            x, weight, bias, mean, var, training, _momentum, eps = args[:8]
        elif name == "_native_batch_norm_legit_no_training":
            x, weight, bias, mean, var, _momentum, eps = args[:7]
            training = False
        else:  # native_batch_norm
            x, weight, bias, mean, var, training, _momentum, eps = args[:8]
        if training:
            raise ModelError(
                f"batch-norm at {node.describe()} runs in training mode",
                hint="put the model in eval mode (model.eval()) before saving or explaining it",
            )
        if not all(isinstance(t, torch.Tensor) for t in (mean, var)) or not isinstance(x, Ref):
            return self._unsupported(node, "batch-norm without running statistics")
        scale = 1.0 / torch.sqrt(var + eps)
        if weight is not None:
            scale = weight * scale
        shift = -mean * scale
        if bias is not None:
            shift = shift + bias
        # the tuple-returning variants become a plain tensor; their getitem(…, 0) is aliased away
        return dataclasses.replace(node, target=channel_affine, args=(x, scale, shift), kwargs={})

    def _check_scale(self, node: Node) -> Node:
        refs = [a for a in node.args if isinstance(a, Ref) and a.name not in self.meta]
        if len(refs) > 1 and node.op in ("mul", "div"):
            return dataclasses.replace(node, kind="product")  # the canonizers decide: gate, normaliser or product
        if len(refs) > 1 or (len(refs) == 1 and not isinstance(node.args[0], Ref) and node.op == "div"):
            return self._unsupported(node, f"'{node.op}' with the activation as divisor has no LRP rule in lrpcli")
        return node

    def _normalise_norm(self, node: Node) -> Node:
        """Every layer/group/RMS norm spelling as one ``norms.normalize(x, weight, bias, ...)`` node."""
        from .passes import norms

        form = norms.from_op(node.op, node.args, node.kwargs)
        if form is None:
            return self._unsupported(node, f"'{node.op}' is a normalisation lrpcli does not know")
        args, kwargs = form
        if not isinstance(args[0], Ref) or any(isinstance(a, Ref) for a in args[1:]):
            return self._unsupported(node, f"'{node.op}' with a weight computed from the input")
        return dataclasses.replace(node, target=norms.normalize, args=args, kwargs=kwargs)

    def _check_embedding(self, node: Node) -> Node:
        weight, ids = node.args[:2]
        if isinstance(weight, Ref) or not isinstance(ids, Ref):
            return self._unsupported(node, "an embedding whose table is computed from the input")
        if ids.name not in self.id_views:
            # indices computed from the ids (RoBERTa's position ids count the non-padding tokens): a lookup of
            # positions, a constant for relevance like a bias, whatever its indices are
            self.meta.add(node.name)
            return dataclasses.replace(node, kind="meta")
        return node

    @staticmethod
    def _unsupported(node: Node, hint: str) -> Node:
        return dataclasses.replace(node, kind=None, hint=hint)


def constant_product(x: Any, y: Any) -> bool:
    """Is ``x @ y`` an activation times a constant that is no linear layer's weight: a batch of matrices (DeBERTa's
    and Wav2Vec2-BERT's queries times relative position keys), or the constant on the left? A product with one
    live factor: its rules (uniform, signal) give that factor all, the epsilon rule of a linear map."""
    live = [isinstance(x, Ref), isinstance(y, Ref)]
    constant = y if live[0] else x
    if sum(live) != 1 or not isinstance(constant, torch.Tensor) or not constant.is_floating_point():
        return False
    return not (live[0] and constant.ndim == 2)


def _inline_wrapped_blocks(gm: torch.fx.GraphModule) -> None:
    """A block run under ``torch.autocast(enabled=False)`` (Nemotron's LayerNorm1P) or under ``torch.no_grad()`` /
    ``set_grad_enabled`` reaches us as a higher-order op (``wrap_with_autocast``, ``wrap_with_set_grad_enabled``)
    around a submodule; its ops compute as written, so they are put in the graph in its place (an enabled autocast,
    which changes the ops' dtypes, stays and is refused). Grad mode changes no value, and relevance is no gradient:
    the engine routes it through ``detach`` too. Reformer runs each reversible layer under no_grad because its
    backward recomputes the layer (its gradient flows through the layer all the same); integer results computed
    there (hashed buckets, their sort order) are held indices anyway, as every int value read by a float op is."""
    for node in list(gm.graph.nodes):
        wrapper = type(node.target).__name__ if node.op == "call_function" else ""
        if wrapper == "WrapWithAutocast" and len(node.args) >= 5 and not node.args[2]:
            sub_node, operands = node.args[4], node.args[5:]
        elif wrapper == "WrapWithSetGradEnabled" and len(node.args) >= 2:
            sub_node, operands = node.args[1], node.args[2:]
        else:
            continue
        sub = getattr(gm, sub_node.target, None) if isinstance(sub_node, torch.fx.Node) and sub_node.op == "get_attr" else None
        if not isinstance(sub, torch.fx.GraphModule):
            continue
        body = [n for n in sub.graph.nodes if n.op not in ("placeholder", "output")]
        if any(n.op != "call_function" for n in body) or not all(user.target is operator.getitem for user in node.users):
            continue
        env = dict(zip((n for n in sub.graph.nodes if n.op == "placeholder"), operands))
        with gm.graph.inserting_before(node):
            for inner in body:
                env[inner] = gm.graph.node_copy(inner, lambda arg: env[arg])
                if "nn_module_stack" not in env[inner].meta and "nn_module_stack" in node.meta:
                    env[inner].meta["nn_module_stack"] = node.meta["nn_module_stack"]
        results = torch.fx.graph.map_arg(next(n for n in sub.graph.nodes if n.op == "output").args[0], lambda arg: env[arg])
        for user in list(node.users):
            user.replace_all_uses_with(results[user.args[1]])
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)


def _write_out_glu(gm: torch.fx.GraphModule) -> None:
    """``glu(x, dim)`` as the gate it is, ``a * sigmoid(b)`` with ``a, b`` the halves of x along dim (Wav2Vec2-BERT's
    convolution module), so that its product gets the rules of every other sigmoid gate (held, or split)."""
    aten = torch.ops.aten
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or ops.op_name(node.target) != "glu" or not isinstance(node.meta.get("val"), torch.Tensor):
            continue
        x = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
        half = node.meta["val"].shape[dim]  # the output's size along dim: half the input's
        with gm.graph.inserting_before(node):
            signal = gm.graph.call_function(aten.slice.Tensor, (x, dim, 0, half))
            gate_input = gm.graph.call_function(aten.slice.Tensor, (x, dim, half, 2 * half))
            gate = gm.graph.call_function(aten.sigmoid.default, (gate_input,))
            product = gm.graph.call_function(aten.mul.Tensor, (signal, gate))
        for new in (signal, gate_input, gate, product):
            new.meta.update(node.meta)  # each is shaped like the output: the module, the value's shape and dtype
        node.replace_all_uses_with(product)
        gm.graph.erase_node(node)


def _write_out_addcmul(gm: torch.fx.GraphModule) -> None:
    """``addcmul(x, a, b, value=v)`` as the ``x + v * (a * b)`` it is (Mega's gated residual ``addcmul(x, gate, h -
    x)``), so that its product gets the rules of every other product (a sigmoid gate held, or a split)."""
    aten = torch.ops.aten
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or ops.op_name(node.target) != "addcmul" or len(node.args) != 3:
            continue
        value = node.kwargs.get("value", 1)
        if set(node.kwargs) - {"value"} or not isinstance(value, (int, float)):
            continue
        with gm.graph.inserting_before(node):
            product = gm.graph.call_function(aten.mul.Tensor, (node.args[1], node.args[2]))
            scaled = product if value == 1 else gm.graph.call_function(aten.mul.Tensor, (product, value))
            total = gm.graph.call_function(aten.add.Tensor, (node.args[0], scaled))
        for new in dict.fromkeys((product, scaled, total)):
            new.meta.update(node.meta)  # the module, the output's shape and dtype (the operands broadcast to it)
        node.replace_all_uses_with(total)
        gm.graph.erase_node(node)


def _write_out_complex_rotations(gm: torch.fx.GraphModule) -> None:
    """``view_as_real(view_as_complex(x) * c)`` with ``c`` computed from constants only (Llama 4's rotary
    embedding: each pair of x rotated by constant angles) as one real op, ``complex_mul(x, view_as_real(c))``:
    a linear map of x by constants (kind scale), whose rules need no complex numbers."""
    aten = torch.ops.aten
    constant: dict[torch.fx.Node, bool] = {}

    def is_constant(node: torch.fx.Node) -> bool:
        if node not in constant:
            constant[node] = node.op == "get_attr" or (node.op == "call_function" and all(is_constant(a) for a in node.all_input_nodes))
        return constant[node]

    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.mul.Tensor or len(node.args) != 2 or node.kwargs:
            continue
        users = list(node.users)
        for position in (0, 1):
            source, factor = node.args[position], node.args[1 - position]
            if not (isinstance(source, torch.fx.Node) and source.target is aten.view_as_complex.default and isinstance(factor, torch.fx.Node)):
                continue
            if not is_constant(factor) or not users or any(user.target is not aten.view_as_real.default for user in users):
                continue
            with gm.graph.inserting_before(node):
                pairs = gm.graph.call_function(aten.view_as_real.default, (factor,))
                real = gm.graph.call_function(complex_mul, (source.args[0], pairs))
            pairs.meta.update(factor.meta)
            real.meta.update(users[0].meta)  # the module, and the real value's shape and dtype
            for user in users:
                user.replace_all_uses_with(real)
                gm.graph.erase_node(user)
            gm.graph.erase_node(node)
            if not source.users:
                gm.graph.erase_node(source)
            break


def _random_draw(fx_node: torch.fx.Node) -> UnsupportedOpError:
    """A forward that draws random numbers (Reformer's LSH attention draws the rotations it hashes with on every call,
    for texts longer than one chunk) computes another function on each call: a graph with one draw folded in would
    explain none of them (and with a seed set in the model, another draw than the model's), so it is refused by name."""
    module, module_type = _module_of(fx_node)
    return UnsupportedOpError(
        ops.op_name(fx_node.target), fx_node.name, module, module_type,
        hint="the model draws random numbers in its forward, so its output changes from call to call and no one function "
        "can be explained. Explain inputs for which it draws none (Reformer: texts no longer than its lsh_attn_chunk_length, "
        "so that LSH attention does not hash), or make the draw a fixed buffer of the model",
    )


def _unsupported_hint(op_name: str) -> str:
    return (
        f"lrpcli has no LRP rule for '{op_name}'. Rewrite that part of the model with supported "
        "ops (`lrp rules` lists them), or explain a sub-model that stops before it."
    )


def _guess_module_type(node: Node) -> str:
    if node.op in _MODULE_TYPE_BY_OP and node.kind in ("conv", "linear"):
        return _MODULE_TYPE_BY_OP[node.op]
    if node.kind == "conv":
        weight = node.args[1]
        dims = weight.ndim - 2 if isinstance(weight, torch.Tensor) else 2
        return f"ConvTranspose{dims}d" if node.is_transposed_conv else f"Conv{dims}d"
    if node.kind == "batchnorm":
        return "BatchNorm"
    return ""


def _first_tensor(value: Any) -> torch.Tensor | None:
    """A node's value, or a tuple output's first tensor (its parts are shaped alike: unbind, split, chunk)."""
    if isinstance(value, (tuple, list)):
        value = next((part for part in value if isinstance(part, torch.Tensor)), None)
    return value if isinstance(value, torch.Tensor) else None


def _same_size(a: Any, b: Any) -> bool:
    """Are two (symbolic) sizes the same expression?"""
    if isinstance(a, torch.SymInt) and isinstance(b, torch.SymInt):
        return a.node.expr == b.node.expr
    return False


def _get_attr(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, torch.nn.Parameter):
        return obj.detach()
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    return obj


def from_graph_module(gm: torch.fx.GraphModule, source: str, extras: bool = False, explained: int = 1) -> Graph:
    """Build a Graph from the fx GraphModule of an ExportedProgram (``ep.module()``): its first ``explained``
    inputs get relevance; with ``extras``, the inputs after them are extra inputs that are never explained."""
    return _Builder(gm, source).build(extras, explained)
