"""Params and MACs of a (sub-)network, counted by torchprofile.

torchprofile traces the model and counts multiply-accumulates per aten op from the traced shapes,
so a supernet with active widths is counted as the sub-network it runs, and the count needs no
per-layer bookkeeping of ours. Params of an active sub-network are the sizes of the sliced weights.

:func:`count_macs` is the reference (torchprofile's ``jit`` trace, slow on a large supernet).
:func:`count_macs_fast` gives the same integer from one eager forward pass watched by a
``TorchDispatchMode`` (no trace, so much cheaper); the architecture search counts its candidates with
it. Timings: docs/experiments/2026-11-21-cpu-speedups.md.
"""

from __future__ import annotations

import math
import operator
import warnings
import weakref
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from slimface.nn.modes import module_mode
from slimface.nn.super_layers import SuperMixin, branch_runs, probe_layers, super_layers


def _node_macs(node: Any, macs: int) -> int:
    """torchprofile counts a transposed conv as ``out_numel * c_in * k^2``, i.e. as the dense conv
    that would produce its output, which is stride^2 too many; a transposed conv really does
    ``in_numel * c_out * k^2`` multiply-accumulates (each input pixel scatters one kernel)."""
    if node.operator != "aten::_convolution":
        return macs
    out_shape, in_shape, w_shape = node.outputs[0].shape, node.inputs[0].shape, node.inputs[1].shape
    transposed = out_shape[-1] > in_shape[-1]
    if not transposed:
        return macs
    k = 1
    for d in w_shape[2:]:
        k *= d
    numel = 1
    for d in in_shape:
        numel *= d
    return numel * w_shape[1] * k


def count_macs(model: nn.Module, inputs: tuple[Any, ...]) -> int:
    """Multiply-accumulates of one forward pass (batch as given; use batch 1).

    Counted by torchprofile (convs, linears, norms and the element-wise ops it knows), with its
    transposed-conv count corrected (see :func:`_node_macs`).
    """
    from torchprofile import profile_macs

    with module_mode(model), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        per_node = profile_macs(model, inputs, reduction=None)
    return int(sum(_node_macs(node, int(m)) for node, m in per_node.items()))



# ----------------------------------------------------------------------------- fast exact count
#
# count_macs_fast reproduces count_macs from an eager forward pass:
#
# * a TorchDispatchMode sees every aten op the forward runs (below autograd and below the
#   CompositeImplicit decompositions) and counts it with torchprofile's own HANDLER_MAP handlers,
#   mapping dispatch-level names onto the traced ones (convolution -> _convolution with our
#   transposed-conv correction, native/_native_batch_norm_legit* -> batch_norm, native_layer_norm,
#   native_group_norm, grid_sampler_2d -> grid_sampler, _adaptive_avg_pool2d, and mm/mv/dot,
#   which is what aten::linear / aten::matmul decompose into); every other op counts 0, as torchprofile
#   counts the ops it has no handler for (it warns and skips them);
# * the jit trace is dead-code eliminated, so torchprofile only counts ops that reach an output (e.g.
#   CR-GAN's view-logits head is not counted when the forward returns the image): the mode records
#   which op produced which tensor and only the ops the outputs depend on are summed;
# * the tracer records tensor sizes as 0-dim tensors, so Python arithmetic on sizes becomes aten ops
#   (``c * h * w`` is two 1-MAC aten::mul) that count when their result feeds an op: a
#   TorchFunctionMode hands out sizes as int subclasses that record this arithmetic;
# * torch functions that are CompositeImplicit ops counted differently by torchprofile than their
#   decomposition would be (einsum, direct mm/mv/dot, lstm, attention, ... see _UNMATCHED) make the
#   fast count give up and return count_macs (torchprofile) instead, so the number is always its.

class _Fallback(Exception):
    """The forward used something whose torchprofile count the fast counter does not reproduce."""


# torch functions (by __name__) whose dispatch-level decomposition would be counted differently
# from what torchprofile counts for the op the jit trace records
_UNMATCHED = frozenset({
    "mm", "mv", "dot", "vdot", "inner", "outer", "ger", "kron", "tensordot", "einsum", "chain_matmul",
    "multi_dot", "bilinear", "cosine_similarity", "pairwise_distance", "cdist", "pdist", "affine_grid",
    "affine_grid_generator", "scaled_dot_product_attention", "multi_head_attention_forward",
    "lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
    "rms_norm", "rrelu", "rrelu_", "conv_tbc", "_weight_norm", "stft", "istft", "trapz", "trapezoid",
    "l1_loss", "kl_div", "poisson_nll_loss", "cosine_embedding_loss", "margin_ranking_loss",
    "hinge_embedding_loss", "triplet_margin_loss", "triplet_margin_with_distance_loss",
})
# feature dropouts decompose into a mask multiplication when training
_DROPOUTS = frozenset({"dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
                       "feature_dropout", "feature_dropout_", "alpha_dropout_", "feature_alpha_dropout_"})

_EMPTY: frozenset[int] = frozenset()
_ACTIVE: "_DispatchCounter | None" = None


class _SizeInt(int):
    """A tensor size handed out while counting. Under the jit tracer sizes are 0-dim tensors, so
    arithmetic on them is traced; this int remembers which ops it depends on and records ``*``."""

    _macs_deps: frozenset[int] = _EMPTY


class _SizeFloat(float):
    """A float computed from :class:`_SizeInt` values (``h / 2``), traced like them."""

    _macs_deps: frozenset[int] = _EMPTY


def _num_deps(v: Any) -> frozenset[int]:
    return v._macs_deps if isinstance(v, (_SizeInt, _SizeFloat)) else _EMPTY


def _plain(v: Any) -> Any:
    if isinstance(v, _SizeInt):
        return int(v)
    if isinstance(v, _SizeFloat):
        return float(v)
    return v


def _traced_number(value: Any, deps: frozenset[int]) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    out: Any = _SizeInt(value) if isinstance(value, int) else _SizeFloat(value)
    out._macs_deps = deps
    return out


def _binop(fn: Callable[[Any, Any], Any], counted: bool, reflected: bool) -> Callable[[Any, Any], Any]:
    def op(self: Any, other: Any) -> Any:
        if not isinstance(other, (int, float)):
            return NotImplemented
        a, b = (_plain(other), _plain(self)) if reflected else (_plain(self), _plain(other))
        res = fn(a, b)
        deps = _num_deps(self) | _num_deps(other)
        if counted and _ACTIVE is not None:  # a traced aten::mul of 0-dim tensors: 1 MAC
            deps = frozenset((_ACTIVE.add_node(1, deps),))
        return _traced_number(res, deps)

    return op


def _unop(fn: Callable[..., Any]) -> Callable[..., Any]:
    def op(self: Any, *rest: Any) -> Any:
        return _traced_number(fn(_plain(self), *rest), _num_deps(self))

    return op


for _cls in (_SizeInt, _SizeFloat):
    for _name, _fn in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                       ("truediv", operator.truediv), ("floordiv", operator.floordiv),
                       ("mod", operator.mod), ("pow", operator.pow)):
        setattr(_cls, f"__{_name}__", _binop(_fn, _name == "mul", False))
        setattr(_cls, f"__r{_name}__", _binop(_fn, _name == "mul", True))
    for _name, _fn in (("neg", operator.neg), ("pos", operator.pos), ("abs", operator.abs),
                       ("floor", math.floor), ("ceil", math.ceil), ("trunc", math.trunc), ("round", round)):
        setattr(_cls, f"__{_name}__", _unop(_fn))


def _collect_num_deps(obj: Any, acc: set[int], depth: int = 0) -> None:
    if isinstance(obj, (_SizeInt, _SizeFloat)):
        acc.update(obj._macs_deps)
    elif depth < 4:
        if isinstance(obj, (list, tuple)):
            for v in obj:
                _collect_num_deps(v, acc, depth + 1)
        elif isinstance(obj, dict):
            for v in obj.values():
                _collect_num_deps(v, acc, depth + 1)
        elif isinstance(obj, slice):
            for v in (obj.start, obj.stop, obj.step):
                _collect_num_deps(v, acc, depth + 1)


def _tensors(obj: Any, out: list[torch.Tensor], depth: int = 0) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for v in obj:
            _tensors(v, out, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for v in obj.values():
            _tensors(v, out, depth + 1)
    return out


def _var(v: Any) -> Any:
    from torchprofile.ir import Variable

    if isinstance(v, torch.Tensor):
        return Variable(name="", dtype="", shape=list(v.shape))
    return Variable(name="", dtype="", value=v)


def _node(op: str, ins: Iterable[Any], outs: Any) -> Any:
    from torchprofile.ir import Node

    return Node(operator=op, attributes={}, inputs=[_var(v) for v in ins],
                outputs=[_var(v) for v in _tensors(outs, [])], scope="")


def _handler(name: str) -> Callable[[Any], int]:
    from torchprofile.handlers import HANDLER_MAP

    fn = HANDLER_MAP[name]
    assert fn is not None
    return fn


def _count_conv(args: tuple[Any, ...], out: Any) -> int:
    node = _node("aten::_convolution", args[:2], out)
    return _node_macs(node, int(_handler("aten::_convolution")(node)))


def _as(name: str, pick: Callable[[tuple[Any, ...]], list[Any]]) -> Callable[[tuple[Any, ...], Any], int]:
    """Count a dispatch-level op with torchprofile's handler of the traced op ``name``, whose
    inputs (in the traced op's argument order) ``pick`` takes from the dispatch-level arguments."""
    def count(args: tuple[Any, ...], out: Any) -> int:
        return int(_handler(name)(_node(name, pick(args), out)))

    return count


_batch_norm = _as("aten::batch_norm", lambda a: [a[0], a[1]])
_DISPATCH_ALIASES: dict[str, Callable[[tuple[Any, ...], Any], int]] = {
    "aten::convolution": _count_conv,
    "aten::_convolution": _count_conv,
    # what aten::linear / aten::matmul decompose into (direct calls are in _UNMATCHED)
    "aten::mm": _as("aten::matmul", lambda a: [a[0], a[1]]),
    "aten::mv": _as("aten::matmul", lambda a: [a[0], a[1]]),
    "aten::dot": _as("aten::matmul", lambda a: [a[0], a[1]]),
    "aten::vdot": _as("aten::matmul", lambda a: [a[0], a[1]]),
    "aten::native_batch_norm": _batch_norm,
    "aten::_native_batch_norm_legit": _batch_norm,
    "aten::_native_batch_norm_legit_no_training": _batch_norm,
    "aten::_native_batch_norm_legit_functional": _batch_norm,
    "aten::cudnn_batch_norm": _batch_norm,
    "aten::miopen_batch_norm": _batch_norm,
    "aten::native_layer_norm": _as("aten::layer_norm", lambda a: [a[0], a[1], a[2]]),
    "aten::native_group_norm": _as("aten::group_norm", lambda a: [a[0], None, a[1]]),
    "aten::grid_sampler_2d": _as("aten::grid_sampler", lambda a: [a[0], a[1], a[2]]),
    "aten::grid_sampler_3d": _as("aten::grid_sampler", lambda a: [a[0], a[1], a[2]]),
    "aten::cudnn_grid_sampler": _as("aten::grid_sampler", lambda a: [a[0], a[1], 0]),
    "aten::_adaptive_avg_pool2d": _as("aten::adaptive_avg_pool2d", lambda a: list(a)),
    "aten::_adaptive_avg_pool3d": _as("aten::adaptive_avg_pool3d", lambda a: list(a)),
}


class _OpInfo:
    __slots__ = ("count", "mutated")

    def __init__(self, func: Any) -> None:
        from torchprofile.handlers import HANDLER_MAP

        schema = func._schema
        name = schema.name
        self.count: Callable[[tuple[Any, ...], Any], int] | None = _DISPATCH_ALIASES.get(name)
        if self.count is None and HANDLER_MAP.get(name) is not None:
            self.count = _as(name, lambda a: list(a))
        # arguments the op writes to (in-place and out= variants), by position or keyword
        self.mutated: list[tuple[int, str]] = [
            (i, a.name) for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write
        ]


_OP_INFO: dict[Any, _OpInfo] = {}


def _storage_key(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().data_ptr())
    except Exception:
        return -1


class _DispatchCounter(TorchDispatchMode):
    """Counts every aten op of the forward and remembers which op produced which tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.macs: list[int] = []
        self.deps: list[tuple[int, ...]] = []
        self.producer: dict[int, tuple[weakref.ref, int]] = {}
        self.writers: dict[int, list[int]] = {}  # storage -> in-place ops that wrote it
        self.roots: list[int] = []               # ops writing to inputs / parameters
        self.extra: frozenset[int] = _EMPTY      # size arithmetic the current torch call consumes

    def add_node(self, macs: int, deps: Iterable[int]) -> int:
        self.macs.append(int(macs))
        self.deps.append(tuple(deps))
        return len(self.macs) - 1

    def dep_of(self, t: Any) -> int | None:
        entry = self.producer.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        return None

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        info = _OP_INFO.get(func)
        if info is None:
            info = _OP_INFO[func] = _OpInfo(func)
        ins = _tensors(args, [])
        if kwargs:
            _tensors(kwargs, ins)
        deps = set(self.extra)
        for t in ins:
            d = self.dep_of(t)
            if d is not None:
                deps.add(d)
        if self.writers:
            for t in ins:
                deps.update(self.writers.get(_storage_key(t), ()))
        idx = self.add_node(info.count(args, out) if info.count is not None else 0, deps)
        for t in _tensors(out, []):
            self.producer[id(t)] = (weakref.ref(t), idx)
        for i, name in info.mutated:
            t = kwargs[name] if name in kwargs else (args[i] if i < len(args) else None)
            if not isinstance(t, torch.Tensor):
                continue
            if self.dep_of(t) is None:
                self.roots.append(idx)  # writes to an input or a parameter: kept by the trace
            self.producer[id(t)] = (weakref.ref(t), idx)
            self.writers.setdefault(_storage_key(t), []).append(idx)
        return out

    def live_macs(self, outputs: Any) -> int:
        """MACs of the ops the outputs depend on (the trace's dead-code elimination)."""
        stack = [d for t in _tensors(outputs, []) if (d := self.dep_of(t)) is not None] + self.roots
        seen: set[int] = set()
        total = 0
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            total += self.macs[i]
            stack.extend(self.deps[i])
        return total


def _dropout_training(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    for key in ("training", "train"):
        if key in kwargs:
            return bool(kwargs[key])
    if len(args) > 2:
        return bool(args[2])
    return name in ("dropout1d", "dropout2d", "dropout3d")  # their default is training=True


class _FunctionGuard(TorchFunctionMode):
    """Hands out sizes as :class:`_SizeInt`, links size arithmetic to the ops consuming it, and gives
    up (:class:`_Fallback`) on torch functions the dispatch-level count does not match."""

    def __init__(self, counter: _DispatchCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _UNMATCHED or (name in _DROPOUTS and _dropout_training(name, args, kwargs)):
            raise _Fallback(name)
        if name == "interpolate" and (kwargs.get("recompute_scale_factor") or (len(args) > 4 and args[4])):
            raise _Fallback("interpolate(recompute_scale_factor=True)")
        counter = self.counter
        acc: set[int] = set()
        _collect_num_deps(args, acc)
        if kwargs:
            _collect_num_deps(kwargs, acc)
        if not acc:
            out = func(*args, **kwargs)
        else:
            previous = counter.extra
            counter.extra = previous | acc
            try:
                out = func(*args, **kwargs)
            finally:
                counter.extra = previous
        if func is _TENSOR_SIZE or func is _TENSOR_NUMEL or (name == "__get__" and getattr(func, "__self__", None) is _TENSOR_SHAPE):
            d = counter.dep_of(args[0]) if args else None
            deps = frozenset((d,)) if d is not None else _EMPTY
            if isinstance(out, tuple):
                out = torch.Size([_traced_number(v, deps) for v in out])
            else:
                out = _traced_number(out, deps)
        return out


_TENSOR_SIZE = torch.Tensor.size
_TENSOR_NUMEL = torch.Tensor.numel
_TENSOR_SHAPE = torch.Tensor.shape


def count_macs_fast(model: nn.Module, inputs: tuple[Any, ...], fallback: bool = True) -> int:
    """Exactly :func:`count_macs` (torchprofile plus the transposed-conv correction), from one eager
    no-grad forward pass instead of a jit trace (~10x faster; see the comment above).

    If the forward uses a torch function whose torchprofile count this counter does not reproduce
    (``_UNMATCHED``), or the instrumented pass fails, the result comes from :func:`count_macs`;
    ``fallback=False`` raises instead (tests use it to check the fast path covers a model).
    """
    global _ACTIVE
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    previous = _ACTIVE
    with module_mode(model):
        counter = _DispatchCounter()
        _ACTIVE = counter
        try:
            with torch.no_grad(), _FunctionGuard(counter), counter:
                out = model(*args)
            return counter.live_macs(out)
        except Exception:
            if not fallback:
                raise
        finally:
            _ACTIVE = previous
        return count_macs(model, inputs)


def count_params(model: nn.Module) -> int:
    """Parameters the model runs with: for super layers only the active slices count."""
    total = 0
    counted: set[int] = set()
    for _, layer in super_layers(model):
        assert isinstance(layer, nn.Module)
        for name, p in layer.named_parameters(recurse=False):
            counted.add(id(p))
        sliced = layer.sliced_state() if isinstance(layer, SuperMixin) else {}
        for name, _ in layer.named_parameters(recurse=False):
            total += sliced[name].numel()
    for p in model.parameters():
        if id(p) not in counted:
            total += p.numel()
    return total


def count_conv_macs(model: nn.Module, inputs: tuple[Any, ...]) -> int:
    """Multiply-accumulates of the convs, transposed convs and linears alone, from forward hooks.

    About a hundred times cheaper than :func:`count_macs` (no tracing) and never larger than it
    (torchprofile counts the same layers plus norms and element-wise ops), so it is a safe lower
    bound for screening candidates against a budget; reported numbers come from count_macs.
    """
    return ConvMacsModel(model, inputs).probed


def _depthwise(module: nn.Module) -> bool:
    return bool(getattr(module, "depthwise", False)) or (isinstance(module, nn.Conv2d) and module.groups > 1)


class ConvMacsModel:
    """:func:`count_conv_macs` of any sub-network as a formula of the widths, without running it.

    One probe forward (at any widths) records, per conv/linear, the spatial size it works on and the channel
    layouts of its input and output; a config's count is then a sum over layers of
    ``active_out * active_in * k^2 * positions`` (about a millisecond in Python instead of a
    forward pass), which lets the search shrink candidates and the supernet sample near-budget
    sub-networks cheaply. Layers outside the super layers count at their full size.

    Choice convs (:class:`~slimface.nn.super_layers.ConvChoice`) are priced by type: a second probe
    with every choice flipped records the branches the first one did not run, and each branch's
    terms count only when the config's ``conv:<name>`` key (separable when missing) picks it.
    """

    def __init__(self, model: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.fixed = 0
        self.probed = 0  # the count of the probe forward itself (the widths and types active during it)
        # (out layout, in layout or None, multiplier per active (out x in) channel pair,
        #  (conv key, type) of the choice branch it belongs to or None)
        self.terms: list[tuple[Any, Any, int, tuple[str, int] | None]] = []
        records: list[tuple[nn.Module, int, tuple[str, int] | None]] = []

        def visit(module: nn.Module, x: torch.Tensor, out: Any, first: bool, tag: tuple[str, int] | None) -> None:
            if isinstance(module, nn.ConvTranspose2d):
                per_pair = (x.numel() // x.shape[1]) * module.kernel_size[0] * module.kernel_size[1]
                c_out, c_in = out.shape[1], x.shape[1]
            elif isinstance(module, nn.Conv2d):
                per_pair = (out.numel() // out.shape[1]) * module.kernel_size[0] * module.kernel_size[1]
                c_out, c_in = out.shape[1], (1 if _depthwise(module) else x.shape[1])
            else:
                per_pair = out.numel() // out.shape[-1]
                c_out, c_in = out.shape[-1], x.shape[-1]
            records.append((module, per_pair, tag))
            if first:  # the first probe counts towards ``probed``
                self.probed += per_pair * c_out * c_in

        probe_layers(model, inputs, visit)
        for module, per_pair, tag in records:
            depthwise = _depthwise(module)
            if isinstance(module, SuperMixin):
                self.terms.append((module.out_chans, None if depthwise else module.in_chans, per_pair, tag))
            else:
                out_c = module.out_features if isinstance(module, nn.Linear) else module.out_channels
                in_c = 1 if depthwise else (module.in_features if isinstance(module, nn.Linear) else module.in_channels)
                self.fixed += out_c * in_c * per_pair

    def __call__(self, widths: dict[str, int] | None) -> int:
        total = self.fixed
        for out_c, in_c, per_pair, tag in self.terms:
            if not branch_runs(widths, tag):
                continue  # the other type of a choice conv
            n = out_c.active_total(widths)
            if in_c is not None:
                n *= in_c.active_total(widths)
            total += n * per_pair
        return int(total)
