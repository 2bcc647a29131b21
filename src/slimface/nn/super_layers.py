"""Super (dynamic-width) layers that only slice weights.

Each layer is a subclass of the matching ``torch.nn`` layer, built at its *full* width, and knows the
channel layout (:class:`~slimface.nn.channels.Chans`) of its input and output. With no active widths
it is exactly the plain layer (same state_dict keys, same speed), so a teacher, a supernet and an
exported sub-network are all built from one model definition. ``set_widths(widths)`` activates a
sub-network: the layer then computes with the weight rows/columns of the active channels only, which
are views (or gathers, after concatenations) of the full weights, so training a sub-network updates
the shared weights in place.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.nn.channels import Chans, ch

Index = slice | Tensor


def _take(t: Tensor, dim: int, idx: Index | None) -> Tensor:
    if idx is None:
        return t
    if isinstance(idx, slice):
        return t.narrow(dim, idx.start, idx.stop - idx.start)
    return t.index_select(dim, idx.to(t.device))


def _as_chans(c: Chans | int) -> Chans:
    return c if isinstance(c, Chans) else ch(c)


class SuperMixin:
    """Bookkeeping shared by all super layers: layouts and the active channel indices."""

    in_chans: Chans
    out_chans: Chans
    _in_idx: Index | None = None
    _out_idx: Index | None = None
    _widths: Mapping[str, int] | None = None

    def _init_layouts(self, in_chans: Chans | int, out_chans: Chans | int) -> None:
        self.in_chans = _as_chans(in_chans)
        self.out_chans = _as_chans(out_chans)

    def set_widths(self, widths: Mapping[str, int] | None) -> None:
        """Activate the sub-network with these group widths (None: the full layer)."""
        self._widths = dict(widths) if widths else None
        self._in_idx = self._index(self.in_chans, widths)
        self._out_idx = self._index(self.out_chans, widths)

    @staticmethod
    def _index(layout: Chans, widths: Mapping[str, int] | None) -> Index | None:
        if not widths or layout.active_total(widths) == layout.total:
            return None
        return layout.active_index(widths)

    def active_in(self) -> int:
        return self.in_chans.active_total(self._widths)

    def active_out(self) -> int:
        return self.out_chans.active_total(self._widths)

    def groups(self) -> set[str]:
        return self.in_chans.groups() | self.out_chans.groups()

    def sliced_state(self) -> dict[str, Tensor]:
        """This layer's parameters and buffers restricted to the active channels (for export)."""
        raise NotImplementedError


class SuperConv2d(SuperMixin, nn.Conv2d):
    """Conv2d (normal or depthwise) whose in/out channels follow the active widths."""

    def __init__(
        self,
        in_chans: Chans | int,
        out_chans: Chans | int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = True,
        depthwise: bool = False,
    ) -> None:
        in_c, out_c = _as_chans(in_chans), _as_chans(out_chans)
        if depthwise and in_c != out_c:
            raise ValueError("a depthwise conv keeps its channel layout")
        padding = kernel_size // 2 if padding is None else padding
        nn.Conv2d.__init__(
            self, in_c.total, out_c.total, kernel_size, stride, padding, bias=bias,
            groups=in_c.total if depthwise else 1,
        )
        self.depthwise = depthwise
        self._init_layouts(in_c, out_c)

    def sliced_state(self) -> dict[str, Tensor]:
        w = _take(self.weight, 0, self._out_idx)
        if not self.depthwise:
            w = _take(w, 1, self._in_idx)
        state = {"weight": w}
        if self.bias is not None:
            state["bias"] = _take(self.bias, 0, self._out_idx)
        return state

    def forward(self, x: Tensor) -> Tensor:
        if self._in_idx is None and self._out_idx is None:
            return super().forward(x)
        s = self.sliced_state()
        groups = s["weight"].shape[0] if self.depthwise else 1
        return F.conv2d(x, s["weight"], s.get("bias"), self.stride, self.padding, self.dilation, groups)


class SuperConvTranspose2d(SuperMixin, nn.ConvTranspose2d):
    """ConvTranspose2d (weight layout in x out x k x k) following the active widths."""

    def __init__(
        self,
        in_chans: Chans | int,
        out_chans: Chans | int,
        kernel_size: int,
        stride: int = 2,
        padding: int = 1,
        output_padding: int = 0,
        bias: bool = True,
    ) -> None:
        in_c, out_c = _as_chans(in_chans), _as_chans(out_chans)
        nn.ConvTranspose2d.__init__(
            self, in_c.total, out_c.total, kernel_size, stride, padding, output_padding, bias=bias
        )
        self._init_layouts(in_c, out_c)

    def sliced_state(self) -> dict[str, Tensor]:
        state = {"weight": _take(_take(self.weight, 0, self._in_idx), 1, self._out_idx)}
        if self.bias is not None:
            state["bias"] = _take(self.bias, 0, self._out_idx)
        return state

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:  # type: ignore[override]
        if self._in_idx is None and self._out_idx is None:
            return super().forward(x, output_size)
        s = self.sliced_state()
        return F.conv_transpose2d(
            x, s["weight"], s.get("bias"), self.stride, self.padding, self.output_padding, 1,
            self.dilation,
        )


def _sync_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with a gradient: the backward sums the ranks' gradients, because every rank's
    loss depends on the reduced value (``torch.distributed.nn.functional.all_reduce`` does the same
    but is deprecated; the functional-collectives replacement is private)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:  # type: ignore[override]
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        return _AllReduceSum.apply(grad)


def all_reduce_sum(t: Tensor) -> Tensor:
    """Autograd-aware SUM all-reduce over the default process group."""
    return _AllReduceSum.apply(t)  # type: ignore[no-any-return]


class SuperBatchNorm2d(SuperMixin, nn.BatchNorm2d):
    """BatchNorm2d over the active channels; running statistics are shared slices.

    ``sync_stats = True`` (set by the Trainer under DDP) computes the batch statistics over all
    ranks' samples, so N processes with b samples each normalise exactly like one process with
    N * b: it keeps weight slicing (``torch.nn.SyncBatchNorm`` is CUDA-only and would not) and works
    on CPU/gloo. Outside an initialised multi-process group the flag changes nothing.
    """

    sync_stats: bool = False

    def __init__(self, chans: Chans | int, momentum: float | None = 0.1) -> None:
        c = _as_chans(chans)
        nn.BatchNorm2d.__init__(self, c.total, momentum=momentum)
        self._init_layouts(c, c)
        self.sync_stats = False

    def sliced_state(self) -> dict[str, Tensor]:
        idx = self._out_idx
        state = {
            "weight": _take(self.weight, 0, idx),
            "bias": _take(self.bias, 0, idx),
            "running_mean": _take(self.running_mean, 0, idx),  # type: ignore[arg-type]
            "running_var": _take(self.running_var, 0, idx),  # type: ignore[arg-type]
        }
        if self.num_batches_tracked is not None:
            state["num_batches_tracked"] = self.num_batches_tracked
        return state

    def forward(self, x: Tensor) -> Tensor:
        """Batch norm over the active channels.

        Contiguous active channels use views of the running statistics, so F.batch_norm updates
        them in place. A pruned concatenated layout (e.g. a residual trunk ``decoder ‖ encoder``)
        gathers its channels, which copies the statistics: they are updated on the copy and
        scattered back.
        """
        idx = self._out_idx
        use_batch = self.training or not self.track_running_stats
        if self.sync_stats and use_batch and _sync_active():
            return self._forward_synced(x)
        if idx is None:
            return super().forward(x)
        s = self.sliced_state()
        update = self.training and self.track_running_stats
        if update and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        momentum = 0.0 if self.momentum is None else self.momentum
        if update and self.momentum is None and self.num_batches_tracked is not None:
            momentum = 1.0 / float(self.num_batches_tracked)
        mean, var = s["running_mean"], s["running_var"]
        y = F.batch_norm(x, mean, var, s["weight"], s["bias"], use_batch, momentum, self.eps)
        if update and not isinstance(idx, slice):
            with torch.no_grad():
                i = idx.to(mean.device)
                self.running_mean.index_copy_(0, i, mean)  # type: ignore[union-attr]
                self.running_var.index_copy_(0, i, var)  # type: ignore[union-attr]
        return y

    def _forward_synced(self, x: Tensor) -> Tensor:
        """Batch norm with statistics of the global batch (all ranks), as F.batch_norm would compute
        them on the ranks' concatenated inputs: normalise with the biased variance, update the running
        variance with the unbiased one. Two all-reduces (sum and count, then the centred sum of
        squares) avoid the cancellation of a one-pass E[x^2] - E[x]^2. :func:`all_reduce_sum`
        back-propagates (its backward all-reduces the gradient), so every rank's input gets the
        gradient of the global batch statistics.
        """
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D input, got {x.dim()}-D")
        s = self.sliced_state()
        c = x.shape[1]
        dims = (0, 2, 3)
        local_n = x.shape[0] * x.shape[2] * x.shape[3]
        packed = torch.cat([x.sum(dims), x.new_full((1,), float(local_n))])
        packed = all_reduce_sum(packed)
        total_n = packed[c].detach()
        mean = packed[:c] / total_n
        centred = x - mean.view(1, c, 1, 1)
        var = all_reduce_sum(centred.pow(2).sum(dims)) / total_n  # biased, for normalisation
        scale = torch.rsqrt(var + self.eps)
        y = centred * scale.view(1, c, 1, 1)
        if self.affine:
            y = y * s["weight"].view(1, c, 1, 1) + s["bias"].view(1, c, 1, 1)
        if self.training and self.track_running_stats and self.running_mean is not None:
            n = float(total_n)
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked) if self.num_batches_tracked is not None else 0.0
            else:
                momentum = self.momentum
            with torch.no_grad():
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                new_mean = s["running_mean"] * (1 - momentum) + mean.detach() * momentum
                new_var = s["running_var"] * (1 - momentum) + unbiased * momentum
                for buf, value in ((self.running_mean, new_mean), (self.running_var, new_var)):
                    idx = self._out_idx
                    if idx is None:
                        buf.copy_(value)
                    elif isinstance(idx, slice):
                        buf[idx].copy_(value)
                    else:
                        buf.index_copy_(0, idx.to(buf.device), value)
        return y


class SuperLinear(SuperMixin, nn.Linear):
    """Linear layer; ``in_chans`` may be a flattened conv layout (see Chans.repeat_spatial)."""

    def __init__(self, in_chans: Chans | int, out_chans: Chans | int, bias: bool = True) -> None:
        in_c, out_c = _as_chans(in_chans), _as_chans(out_chans)
        nn.Linear.__init__(self, in_c.total, out_c.total, bias=bias)
        self._init_layouts(in_c, out_c)

    def sliced_state(self) -> dict[str, Tensor]:
        state = {"weight": _take(_take(self.weight, 0, self._out_idx), 1, self._in_idx)}
        if self.bias is not None:
            state["bias"] = _take(self.bias, 0, self._out_idx)
        return state

    def forward(self, x: Tensor) -> Tensor:
        if self._in_idx is None and self._out_idx is None:
            return super().forward(x)
        s = self.sliced_state()
        return F.linear(x, s["weight"], s.get("bias"))


class SeparableConv2d(nn.Module):
    """Depthwise k x k conv followed by a pointwise 1 x 1 conv (the paper's cheap conv)."""

    def __init__(
        self, in_chans: Chans | int, out_chans: Chans | int, kernel_size: int, stride: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        in_c = _as_chans(in_chans)
        self.depthwise = SuperConv2d(in_c, in_c, kernel_size, stride, bias=False, depthwise=True)
        self.pointwise = SuperConv2d(in_c, out_chans, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        # Depthwise convs are 3-7x faster on channels-last input on CPU (oneDNN's NCHW depthwise
        # path, backward especially, is slow); the layout does not change the values.
        return self.pointwise(self.depthwise(x.contiguous(memory_format=torch.channels_last)))


#: the config key prefix of a searchable conv type (``"conv:<module name>"``, see :class:`ConvChoice`)
CONV_KEY = "conv:"
#: a conv-type key's choices: 0 the separable (cheaper) conv, 1 the normal conv it stands for
SEPARABLE, NORMAL = 0, 1


def conv_key(name: str) -> str:
    """The config key of the choice conv at module ``name``."""
    return CONV_KEY + name


def is_conv_key(key: str) -> bool:
    return key.startswith(CONV_KEY)


def width_part(cfg: Mapping[str, int] | None) -> dict[str, int]:
    """``cfg`` without its conv-type keys: the group widths alone."""
    return {k: v for k, v in (cfg or {}).items() if not is_conv_key(k)}


class ConvChoice(nn.Module):
    """A searchable conv type: the normal conv and the depthwise-separable conv of one convertible
    conv (same layouts, kernel, stride, padding and bias), forwarding through the active one.

    Both branches are super layers, so both follow the active widths; which one runs is the
    config's ``conv:<module name>`` key (:func:`set_conv_choices`; :data:`SEPARABLE` by default, the
    family's student). Export keeps the chosen branch only, under this module's name."""

    def __init__(self, normal: SuperConv2d, separable: SeparableConv2d) -> None:
        super().__init__()
        self.normal = normal
        self.separable = separable
        self.choice = SEPARABLE

    def active(self) -> nn.Module:
        return self.normal if self.choice == NORMAL else self.separable

    def forward(self, x: Tensor) -> Tensor:
        return self.active()(x)


def conv_choices(model: nn.Module) -> dict[str, ConvChoice]:
    """The choice convs of ``model`` by module name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ConvChoice)}


def set_conv_choices(model: nn.Module, cfg: Mapping[str, int] | None) -> None:
    """Activate the conv types of ``cfg`` (``conv:<name>`` keys; a missing key means separable) on
    every choice conv of ``model``; width keys are ignored."""
    for name, choice in conv_choices(model).items():
        value = int((cfg or {}).get(conv_key(name), SEPARABLE))
        if value not in (SEPARABLE, NORMAL):
            raise ValueError(f"{conv_key(name)}: conv type {value} is neither {SEPARABLE} nor {NORMAL}")
        choice.choice = value


def current_conv_choices(model: nn.Module) -> dict[str, int]:
    """The conv types active on ``model``, as config keys (empty without choice convs)."""
    return {conv_key(name): choice.choice for name, choice in conv_choices(model).items()}


def choice_branches(model: nn.Module) -> dict[int, tuple[str, int]]:
    """Every module inside a branch of a choice conv of ``model``, by ``id``: (its conv key, the type
    that branch is). A probe forward records each layer's input sizes; these say which type a
    layer's cost belongs to."""
    return {id(m): (conv_key(name), value) for name, choice in conv_choices(model).items()
            for value, branch in ((NORMAL, choice.normal), (SEPARABLE, choice.separable)) for m in branch.modules()}


@contextmanager
def flipped_conv_choices(model: nn.Module) -> Iterator[None]:
    """Every choice conv of ``model`` at its other type inside the block: a second probe forward then
    runs the branches the first one did not."""
    previous = current_conv_choices(model)
    set_conv_choices(model, {k: NORMAL + SEPARABLE - v for k, v in previous.items()})
    try:
        yield
    finally:
        set_conv_choices(model, previous)


def probe_layers(model: nn.Module, inputs: tuple[Any, ...],
                 visit: Callable[[nn.Module, Tensor, Any, bool, tuple[str, int] | None], None],
                 both_types: bool = True) -> None:
    """One probe forward of ``model`` (eval mode, no grad) calling ``visit(module, input, output,
    first, tag)`` for each conv, transposed conv and linear as it runs (``first`` True; ``tag`` the
    layer's :func:`choice_branches` entry, None outside choice convs); with choice convs and
    ``both_types``, a second forward with every choice flipped visits only the branch layers the
    first did not run (``first`` False): every layer of both types once, in forward order."""
    from slimface.nn.modes import module_mode, unwrap

    inner = unwrap(model)
    branch = choice_branches(inner)
    first = [True]
    seen: set[int] = set()

    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if first[0]:
            seen.add(id(module))
        elif id(module) not in branch or id(module) in seen:
            return
        visit(module, args[0], out, first[0], branch.get(id(module)))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with module_mode(model), torch.no_grad():
            model(*inputs)
            if branch and both_types:
                first[0] = False
                with flipped_conv_choices(inner):
                    model(*inputs)
    finally:
        for h in handles:
            h.remove()


def branch_runs(cfg: Mapping[str, int] | None, tag: tuple[str, int] | None) -> bool:
    """Whether a layer tagged ``(conv key, type)`` by :func:`choice_branches` runs in ``cfg`` (an untagged
    layer always does; a missing key means separable)."""
    return tag is None or int((cfg or {}).get(tag[0], SEPARABLE)) == tag[1]


def separable_names(cfg: Mapping[str, int] | None, names: Iterable[str]) -> list[str]:
    """The convs among ``names`` that ``cfg`` makes separable (a missing key means separable)."""
    return [n for n in names if int((cfg or {}).get(conv_key(n), SEPARABLE)) == SEPARABLE]


def super_layers(model: nn.Module) -> Iterator[tuple[str, SuperMixin]]:
    for name, module in model.named_modules():
        if isinstance(module, SuperMixin):
            yield name, module


def width_groups(model: nn.Module) -> dict[str, int]:
    """Every width group used by the model's super layers and its full width.

    A group must have one full width everywhere it appears (a residual chain, a concatenation
    partner); a mismatch is a bug in the model definition and fails here.
    """
    groups: dict[str, int] = {}
    for name, layer in super_layers(model):
        for seg in layer.in_chans.segments + layer.out_chans.segments:
            if seg.group is None:
                continue
            if groups.setdefault(seg.group, seg.width) != seg.width:
                raise ValueError(
                    f"group {seg.group!r} has width {seg.width} at {name} but "
                    f"{groups[seg.group]} elsewhere"
                )
    return groups


def set_widths(model: nn.Module, widths: Mapping[str, int] | None) -> None:
    """Activate a sub-network on every super layer of ``model`` (None: the full network); conv-type
    keys are ignored (:func:`set_conv_choices` applies them)."""
    widths = width_part(widths)
    if widths:
        known = width_groups(model)
        unknown = sorted(set(widths) - set(known))
        if unknown:
            raise KeyError(f"unknown width group {unknown[0]!r}")
        for g, c in widths.items():
            if not 0 < c <= known[g]:
                raise ValueError(f"group {g!r}: width {c} outside 1..{known[g]}")
    for _, layer in super_layers(model):
        layer.set_widths(widths)


def own_tensors(module: nn.Module) -> dict[str, Tensor]:
    """A module's own parameters and buffers by local name (not its children's)."""
    return dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))


def load_subnet_weights(supernet: nn.Module, subnet: nn.Module) -> None:
    """Copy the active slices of ``supernet`` (after set_widths) into a static ``subnet``.

    ``subnet`` is the same model definition built with the sub-network's widths, so module names
    match one to one; every parameter and buffer of ``subnet`` must be filled exactly once.
    """
    sup_modules = dict(supernet.named_modules())
    for name, choice in conv_choices(supernet).items():  # a choice conv stands for its active branch
        for sub, module in choice.active().named_modules():
            sup_modules[f"{name}.{sub}" if sub else name] = module
    target = subnet.state_dict()
    filled: set[str] = set()
    with torch.no_grad():
        for name, module in subnet.named_modules():
            src = sup_modules.get(name)
            if src is None:
                continue
            if isinstance(src, SuperMixin):
                tensors = src.sliced_state()
            else:
                tensors = own_tensors(src)
            for key, value in tensors.items():
                full = f"{name}.{key}" if name else key
                if full not in target:
                    continue
                if target[full].shape != value.shape:
                    raise ValueError(f"{full}: sub-network shape {tuple(target[full].shape)} "
                                     f"!= slice {tuple(value.shape)}")
                target[full].copy_(value)
                filled.add(full)
    missing = sorted(set(target) - filled)
    if missing:
        raise ValueError(f"sub-network tensor {missing[0]!r} has no source in the supernet")
