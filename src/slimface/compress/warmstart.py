"""Start a student supernet from its trained teacher instead of from random weights.

Teacher and supernet are one model definition (the supernet is built with ``separable=True``), so
their modules pair up by name (a choice conv of ``student.separable: search`` pairs both its branches
with the teacher's conv: the normal one is copied, the separable one factorised). A module the two
share with the same tensor shapes is copied; a
k x k conv that the student splits into depthwise + pointwise gets the best such factorisation of
the teacher's kernel: per input channel i, the (out x k*k) slice ``W[:, i]`` is replaced by its
rank-1 SVD ``u s v^T``, i.e. pointwise column ``u sqrt(s)`` times depthwise kernel ``v sqrt(s)``
(the separable conv computes exactly ``W'[o, i] = P[o, i] D[i]``, so no other choice is closer in
Frobenius norm).

Closest in weights is not closest in output: the teacher's input activations are far from white
(correlated channels, smooth images), so errors along some weight directions cost much more than along
others. Given a few teacher input batches, each factorised conv is then fitted to its teacher conv on
the activations that actually reach it (:func:`fit_separable`): the second moments of the conv's
input patches, recorded with forward hooks at sampled output positions, turn the output error into
a quadratic form, and alternating least squares (pointwise + bias given the depthwise kernels, then
all depthwise kernels given the pointwise) lowers it from the SVD start. The moments' size depends on
the layer only, not on the data, and layers are recorded in chunks under a memory budget. A fit that
is not closer than the SVD on the recorded data is dropped.

A sub-network keeps the *first* c channels of each width group, so before copying, each prunable
group's channels are reordered by importance (:func:`sort_channels`), as once-for-all's
progressive shrinking does: the smallest sub-networks then start with the teacher's strongest
channels instead of an arbitrary subset. The reordering permutes the same group consistently in
every layer's input and output (from the layers' channel layouts), so the teacher computes exactly
the same function after it; a test checks that for every family.

A student whose kernels are capped (``student.max_kernel``) starts from the centre of each larger
teacher kernel: the teacher copy is capped the same way before anything is copied or factorised.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.models.blocks import cap_kernels
from slimface.nn.channels import Chans
from slimface.nn.modes import module_mode
from slimface.nn.super_layers import (
    SeparableConv2d, SuperBatchNorm2d, SuperConv2d, SuperConvTranspose2d, SuperLinear, SuperMixin, conv_choices,
    own_tensors, super_layers,
)


@dataclass
class WarmStartReport:
    """What :func:`warm_start` did: tensors copied, convs factorised, student tensors left as built."""

    copied: int = 0
    factorized: int = 0
    kept: list[str] = field(default_factory=list)
    energy: float = 1.0  # share of the factorised kernels' squared norm the rank-1 parts keep
    fit_images: int = 0  # teacher inputs the activation fit recorded (0: no fit)
    fit_layers: int = 0  # factorised convs the fit was tried on
    fitted: int = 0  # of those, the ones whose fit beat the SVD start and was kept
    # mean relative output error ||student - teacher|| / ||teacher|| over the fit's layers, on the
    # recorded activations: with the SVD factorisation, and as left (fit, or SVD where it was kept)
    error_svd: float = 0.0
    error_fit: float = 0.0

    def summary(self) -> str:
        text = (f"copied {self.copied} tensors, factorised {self.factorized} convs "
                f"(rank-1 keeps {self.energy:.0%} of their energy)")
        if self.fit_layers:
            text += (f"; activation fit on {self.fit_images} teacher inputs: {self.fitted}/{self.fit_layers} "
                     f"convs refitted, relative output error {self.error_svd:.3f} (SVD) -> {self.error_fit:.3f}")
        if self.kept:
            text += f"; {len(self.kept)} tensors kept their initial values (e.g. {self.kept[0]})"
        return text


# -------------------------------------------------------------------- channel order
def _dims(layer: SuperMixin) -> tuple[int, int | None]:
    """(output dim, input dim or None) of a super layer's weight."""
    if isinstance(layer, SuperConvTranspose2d):
        return 1, 0
    if isinstance(layer, SuperConv2d) and layer.depthwise:
        return 0, None
    if isinstance(layer, (SuperConv2d, SuperLinear)):
        return 0, 1
    if isinstance(layer, SuperBatchNorm2d):
        return 0, None
    raise TypeError(f"no channel dims known for {type(layer).__name__}")


def _layout_index(layout: Chans, perms: Mapping[str, Tensor]) -> Tensor | None:
    """Full-tensor index that applies ``perms`` to the segments of their groups (None: identity)."""
    parts: list[Tensor] = []
    offset, touched = 0, False
    for seg in layout.segments:
        perm = perms.get(seg.group) if seg.group is not None else None
        if perm is None:
            idx = torch.arange(seg.size)
        else:
            touched = True
            idx = (perm[:, None] * seg.unit + torch.arange(seg.unit)[None, :]).reshape(-1)
        parts.append(idx + offset)
        offset += seg.size
    return torch.cat(parts) if touched else None


def channel_importance(model: nn.Module, groups: Iterable[str]) -> dict[str, Tensor]:
    """Per group, a score per channel: the L1 norm of the weights that produce it, summed over the
    group's producing convs/linears (each layer normalised to mean 1, so wide layers do not drown
    narrow ones). BN and depthwise layers only carry channels through and are not counted."""
    wanted = set(groups)
    scores: dict[str, Tensor] = {}
    for _, layer in super_layers(model):
        if isinstance(layer, SuperBatchNorm2d) or (isinstance(layer, SuperConv2d) and layer.depthwise):
            continue
        out_dim, _ = _dims(layer)
        w = layer.weight.detach().abs()  # type: ignore[attr-defined]
        per_out = w.transpose(0, out_dim).reshape(w.shape[out_dim], -1).sum(1)
        per_out = per_out / per_out.mean().clamp_min(1e-12)
        offset = 0
        for seg in layer.out_chans.segments:
            if seg.group in wanted:
                s = per_out[offset:offset + seg.size].reshape(seg.width, seg.unit).sum(1)
                scores[seg.group] = scores.get(seg.group, torch.zeros(seg.width)) + s.cpu()
            offset += seg.size
    return scores


@torch.no_grad()
def permute_channels(model: nn.Module, perms: Mapping[str, Tensor]) -> None:
    """Reorder each group's channels by ``perms[group]`` (new position j holds old channel perm[j])
    in every super layer, in place; the model's function does not change."""
    for _, layer in super_layers(model):
        out_dim, in_dim = _dims(layer)
        out_idx = _layout_index(layer.out_chans, perms)
        in_idx = _layout_index(layer.in_chans, perms) if in_dim is not None else None
        for name, t in own_tensors(layer).items():
            if t.dim() == 0:
                continue  # num_batches_tracked
            new = t
            if out_idx is not None:
                new = new.index_select(out_dim if name == "weight" else 0, out_idx.to(t.device))
            if in_idx is not None and name == "weight":
                new = new.index_select(in_dim, in_idx.to(t.device))  # type: ignore[arg-type]
            if new is not t:
                t.copy_(new)


def sort_channels(model: nn.Module, groups: Iterable[str]) -> dict[str, Tensor]:
    """Put each group's most important channels first (see :func:`channel_importance`); returns the
    permutations applied."""
    perms = {g: torch.argsort(s, descending=True, stable=True) for g, s in channel_importance(model, groups).items()}
    permute_channels(model, perms)
    return perms


# -------------------------------------------------------------------- factorisation
def factorize_separable(weight: Tensor) -> tuple[Tensor, Tensor, float]:
    """Rank-1 per input channel: a (O, I, k, k) kernel -> depthwise (I, 1, k, k), pointwise (O, I, 1, 1)
    and the share of the kernel's squared norm they keep."""
    o, i, kh, kw = weight.shape
    m = weight.detach().permute(1, 0, 2, 3).reshape(i, o, kh * kw).double()
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    root = s[:, 0].sqrt()
    pw = (u[:, :, 0] * root[:, None]).t()  # (O, I)
    dw = vh[:, 0, :] * root[:, None]  # (I, k*k)
    kept = float((s[:, 0] ** 2).sum() / (s ** 2).sum().clamp_min(1e-30))
    return dw.reshape(i, 1, kh, kw).to(weight.dtype), pw.reshape(o, i, 1, 1).to(weight.dtype), kept


# -------------------------------------------------------------------- activation fit
def patch_moments(x: Tensor, conv: nn.Conv2d, positions: int = 64,
                  generator: torch.Generator | None = None) -> Tensor:
    """Second moments ``sum_p [x_p; 1] [x_p; 1]^T`` (float64) of the input patches that ``conv`` sees
    at up to ``positions`` random output positions per image; ``x_p`` is ordered like
    ``conv.weight[o].reshape(-1)`` (channel, then kernel row, then column)."""
    b, c = x.shape[:2]
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation  # type: ignore[misc]
    ho = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    m = min(positions, ho * wo)
    pick = torch.rand(b, ho * wo, generator=generator).argsort(1)[:, :m].to(x.device)  # (B, m)
    oy, ox = pick // wo, pick % wo
    ky = (torch.arange(kh, device=x.device) * dh).repeat_interleave(kw)  # (K,)
    kx = (torch.arange(kw, device=x.device) * dw).repeat(kh)
    rows = (oy * sh)[:, :, None] + ky  # (B, m, K), in the padded image
    cols = (ox * sw)[:, :, None] + kx
    padded = F.pad(x.double(), (pw, pw, ph, ph))
    patches = padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols]  # (B, m, K, C)
    feats = patches.permute(0, 1, 3, 2).reshape(b * m, c * kh * kw)
    feats = torch.cat([feats, feats.new_ones(b * m, 1)], 1)
    return feats.t() @ feats


@dataclass
class SeparableFit:
    """A separable conv fitted to a teacher conv (:func:`fit_separable`) and its relative output
    errors ``||student - teacher|| / ||teacher||`` on the moments it was fitted to."""

    depthwise: Tensor  # (C, 1, kh, kw)
    pointwise: Tensor  # (O, C, 1, 1)
    bias: Tensor | None  # (O,), None for a pointwise conv without bias
    error_svd: float  # the SVD factorisation's
    error: float  # the returned weights' (the SVD ones again if the fit was not closer)

    @property
    def improved(self) -> bool:
        return self.error < self.error_svd


def _sq_error(target: Tensor, p: Tensor, d: Tensor, b: Tensor | None, moments: Tensor) -> float:
    """``sum_p ||student(x_p) - target x~_p||^2`` for target rows ``[W, bias]`` (float64)."""
    o, c = p.shape
    delta = target.clone()
    delta[:, :-1] -= (p[:, :, None] * d[None]).reshape(o, -1)
    if b is not None:
        delta[:, -1] -= b
    return float(((delta @ moments) * delta).sum().clamp_min(0.0))


def _ridge(matrix: Tensor, rel: float) -> float:
    return rel * max(float(matrix.diagonal().mean()), 1e-30)


@torch.no_grad()
def fit_separable(weight: Tensor, bias: Tensor | None, moments: Tensor, student_bias: bool,
                  rounds: int = 4, damping: float = 1e-6) -> SeparableFit:
    """Fit depthwise D, pointwise P (and a bias if ``student_bias``) of a separable conv to a k x k
    teacher conv (``weight``, ``bias``) on input-patch ``moments`` (:func:`patch_moments`).

    Alternating least squares from the rank-1 SVD start: P (+ bias) given D, then every D given P,
    ``rounds`` times, then P once more. Each step solves its normal equations with a small proximal
    term (``damping`` relative to the mean curvature, pulling towards the current value), so no step
    raises the output error and directions the data never excites keep their SVD values. Returns
    the SVD weights if the fit ends no closer."""
    o, c, kh, kw = weight.shape
    k = kh * kw
    dev = moments.device
    m = moments.to(dev, torch.float64)
    w = weight.detach().to(dev, torch.float64).reshape(o, c * k)
    b_t = bias.detach().to(dev, torch.float64) if bias is not None else w.new_zeros(o)
    target = torch.cat([w, b_t[:, None]], 1)  # (O, CK+1): teacher output = target @ [x; 1]
    energy = max(float(((target @ m) * target).sum()), 1e-30)

    d0, p0, _ = factorize_separable(weight.detach().to(dev, torch.float64))
    d, p = d0.reshape(c, k), p0.reshape(o, c)
    b = b_t.clone() if student_bias else None
    svd_err = _sq_error(target, p, d, b, m)
    best = (svd_err, p, d, b)
    idx = torch.arange(c, device=dev).repeat_interleave(k)

    def solve_pointwise(d: Tensor, p: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor | None]:
        rows = c + (1 if b is not None else 0)
        a = m.new_zeros(rows, c * k + 1)  # features u = a @ [x; 1]: the depthwise outputs (+ 1)
        a[idx, torch.arange(c * k, device=dev)] = d.reshape(-1)
        if b is not None:
            a[c, c * k] = 1.0
        am = a @ m
        gram = am @ a.t()
        rhs = target @ am.t()  # (O, rows)
        lam = _ridge(gram, damping)
        cur = p if b is None else torch.cat([p, b[:, None]], 1)
        sol = torch.linalg.solve(gram + lam * torch.eye(rows, device=dev, dtype=m.dtype), (rhs + lam * cur).t()).t()
        return (sol[:, :c], sol[:, c]) if b is not None else (sol, None)

    def solve_depthwise(p: Tensor, b: Tensor | None, d: Tensor) -> Tensor:
        mxx = m[:-1, :-1].reshape(c, k, c, k)
        hess = ((p.t() @ p)[:, None, :, None] * mxx).reshape(c * k, c * k)
        shifted = target.clone()
        if b is not None:
            shifted[:, -1] -= b
        cross = (shifted @ m[:, :-1]).reshape(o, c, k)  # E[(teacher - bias) x^T]
        grad = (p[:, :, None] * cross).sum(0).reshape(-1)
        lam = _ridge(hess, damping)
        sol = torch.linalg.solve(hess + lam * torch.eye(c * k, device=dev, dtype=m.dtype), grad + lam * d.reshape(-1))
        return sol.reshape(c, k)

    for step in range(2 * rounds + 1):
        try:
            if step % 2 == 0:
                p, b = solve_pointwise(d, p, b)
            else:
                d = solve_depthwise(p, b, d)
        except torch.linalg.LinAlgError:
            break
        if not (torch.isfinite(p).all() and torch.isfinite(d).all()):
            break
        err = _sq_error(target, p, d, b, m)
        if err < best[0]:
            best = (err, p, d, b)
    err, p, d, b = best
    if err < svd_err - max(1e-4 * svd_err, 1e-12 * energy):
        # balance each channel's scale between D and P as the SVD does (same function)
        pn, dn = p.norm(dim=0), d.norm(dim=1)
        scale = torch.where((pn > 0) & (dn > 0), (pn / dn.clamp_min(1e-300)).sqrt(), torch.ones_like(pn))
        d, p = d * scale[:, None], p / scale[None, :]
    else:  # no real gain, or only rounding: the SVD factorisation as it is
        err, p, d, b = svd_err, p0.reshape(o, c), d0.reshape(c, k), b_t.clone() if student_bias else None
    dtype = weight.dtype
    return SeparableFit(
        depthwise=d.reshape(c, 1, kh, kw).to(weight.device, dtype),
        pointwise=p.reshape(o, c, 1, 1).to(weight.device, dtype),
        bias=b.to(weight.device, dtype) if b is not None else None,
        error_svd=math.sqrt(svd_err / energy), error=math.sqrt(err / energy),
    )


def _fittable(module: SeparableConv2d, conv: nn.Conv2d) -> bool:
    """The teacher conv and the depthwise conv see the same patches (output positions line up)."""
    dw = module.depthwise
    return (conv.stride == dw.stride and conv.padding == dw.padding and conv.dilation == dw.dilation
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def take_images(batches: Iterable[Sequence[Tensor]], images: int) -> list[tuple[Tensor, ...]]:
    """The first ``images`` samples of an iterable of input batches (tuples of tensors that share
    the batch dimension), the last batch cut to fit."""
    out: list[tuple[Tensor, ...]] = []
    left = images
    for batch in batches:
        if left <= 0:
            break
        n = min(left, int(batch[0].shape[0]))
        out.append(tuple(t[:n] for t in batch))
        left -= n
    return out


def _chunks(sizes: Sequence[tuple[str, int]], budget: int) -> Iterator[list[str]]:
    """Consecutive names whose moment matrices together stay under ``budget`` bytes (at least one)."""
    chunk: list[str] = []
    used = 0
    for name, size in sizes:
        if chunk and used + size > budget:
            yield chunk
            chunk, used = [], 0
        chunk.append(name)
        used += size
    if chunk:
        yield chunk


@torch.no_grad()
def record_moments(model: nn.Module, convs: Mapping[str, nn.Conv2d], inputs: Sequence[Sequence[Tensor]],
                   positions: int = 64, seed: int = 0) -> dict[str, Tensor]:
    """Run ``model(*batch)`` (eval mode) over ``inputs`` and return each conv's input-patch moments
    (:func:`patch_moments`), recorded by forward hooks."""
    gen = torch.Generator().manual_seed(seed)
    moments: dict[str, Tensor] = {}

    def hook(name: str):  # noqa: ANN202
        def record(module: nn.Module, args: tuple[Tensor, ...], _: Tensor) -> None:
            mom = patch_moments(args[0], module, positions, gen)  # type: ignore[arg-type]
            moments[name] = moments[name] + mom if name in moments else mom
        return record

    handles = [conv.register_forward_hook(hook(name)) for name, conv in convs.items()]
    try:
        with module_mode(model, False):
            for batch in inputs:
                model(*batch)
    finally:
        for h in handles:
            h.remove()
    return moments


def _fit_layers(pairs: Mapping[str, tuple[SeparableConv2d, nn.Conv2d]], source: nn.Module,
                inputs: Sequence[Sequence[Tensor]], positions: int, budget_bytes: int,
                report: WarmStartReport) -> None:
    """Refit the factorised convs ``pairs`` (student, teacher conv of ``source``) on ``inputs``,
    a chunk of layers per pass of the teacher."""
    sizes = [(n, 8 * (t.weight[0].numel() + 1) ** 2) for n, (_, t) in pairs.items()]
    before: list[float] = []
    after: list[float] = []
    for i, chunk in enumerate(_chunks(sizes, budget_bytes)):
        moments = record_moments(source, {n: pairs[n][1] for n in chunk}, inputs, positions, seed=i)
        for name in chunk:
            module, conv = pairs[name]
            if name not in moments:
                continue  # the teacher never ran this conv
            fit = fit_separable(conv.weight, conv.bias, moments.pop(name), module.pointwise.bias is not None)
            before.append(fit.error_svd)
            after.append(fit.error)
            if fit.improved:
                module.depthwise.weight.copy_(fit.depthwise)
                module.pointwise.weight.copy_(fit.pointwise)
                if fit.bias is not None:
                    module.pointwise.bias.copy_(fit.bias)  # type: ignore[union-attr]
                report.fitted += 1
    report.fit_layers = len(before)
    if before:
        report.error_svd = sum(before) / len(before)
        report.error_fit = sum(after) / len(after)


# -------------------------------------------------------------------- warm start
def with_choice_branches(teacher_modules: Mapping[str, nn.Module], supernet: nn.Module) -> dict[str, nn.Module]:
    """``teacher_modules`` (teacher modules by name) plus, for every choice conv of ``supernet``
    (``student.separable: search``), the teacher's conv at that name under both branch names: the
    normal branch then pairs with it like any copied conv, the separable one like any factorised conv."""
    out = dict(teacher_modules)
    for name in conv_choices(supernet):
        if name in out:
            out[f"{name}.normal"] = out[f"{name}.separable"] = out[name]
    return out


@torch.no_grad()
def warm_start(supernet: nn.Module, teacher: nn.Module, groups: Iterable[str] = (),
               sort: bool = True, batches: Iterable[Sequence[Tensor]] | None = None, images: int = 256,
               positions: int = 64, budget_mb: float = 512.0) -> WarmStartReport:
    """Fill ``supernet`` from ``teacher`` (see the module docstring); the teacher is not modified.

    ``groups``: the prunable width groups to sort by importance first (``sort=False`` keeps the
    teacher's order). ``batches``: teacher input tuples (``teacher(*batch)``, e.g. profile and
    landmarks); given, the first ``images`` of them drive the activation fit of every factorised conv,
    with ``positions`` sampled output positions per image and layer and at most ``budget_mb`` of
    moment matrices held at once. Without them the result is the SVD warm start."""
    source = teacher
    max_kernel = getattr(supernet, "max_kernel", None)
    if sort or max_kernel is not None:  # change a copy: the caller's teacher keeps its order and kernels
        source = copy.deepcopy(teacher)
    if max_kernel is not None:  # a capped student starts from the centre of each larger kernel
        cap_kernels(source, max_kernel)
    if sort:
        sort_channels(source, groups)
    src = with_choice_branches(dict(source.named_modules()), supernet)
    report = WarmStartReport()
    done: set[str] = set()
    kept_energy: list[tuple[float, float]] = []
    to_fit: dict[str, tuple[SeparableConv2d, nn.Conv2d]] = {}
    for name, module in supernet.named_modules():
        t = src.get(name)
        if isinstance(module, SeparableConv2d):
            if isinstance(t, nn.Conv2d) and t.groups == 1 and t.weight.shape[0] == module.pointwise.weight.shape[0] \
                    and t.weight.shape[1] == module.depthwise.weight.shape[0] \
                    and t.weight.shape[2:] == module.depthwise.weight.shape[2:]:
                dw, pw, share = factorize_separable(t.weight)
                module.depthwise.weight.copy_(dw)
                module.pointwise.weight.copy_(pw)
                if module.pointwise.bias is not None and t.bias is not None:
                    module.pointwise.bias.copy_(t.bias)
                elif module.pointwise.bias is not None:
                    module.pointwise.bias.zero_()
                report.factorized += 1
                if _fittable(module, t):
                    to_fit[name] = (module, t)
                kept_energy.append((share, float(t.weight.pow(2).sum())))
                done.update(f"{name}.{sub}.{k}" for sub in ("depthwise", "pointwise")
                            for k in own_tensors(getattr(module, sub)))
            continue
        if t is None:
            continue
        theirs = own_tensors(t)
        for key, mine in own_tensors(module).items():
            full = f"{name}.{key}" if name else key
            if full in done:
                continue
            other = theirs.get(key)
            if other is not None and other.shape == mine.shape:
                mine.copy_(other)
                report.copied += 1
                done.add(full)
    if batches is not None and to_fit:
        # loading and the teacher's forward may draw random numbers: training then starts as after SVD
        rng = torch.random.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        try:
            device = next(source.parameters()).device
            inputs = [tuple(t.to(device) for t in batch) for batch in take_images(batches, images)]
            report.fit_images = sum(int(batch[0].shape[0]) for batch in inputs)
            if inputs:
                _fit_layers(to_fit, source, inputs, positions, int(budget_mb * 2**20), report)
        finally:
            torch.random.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
    for key in supernet.state_dict():
        if key not in done:
            report.kept.append(key)
    if kept_energy:
        total = sum(w for _, w in kept_energy)
        report.energy = sum(s * w for s, w in kept_energy) / max(total, 1e-30)
    return report


__all__ = [
    "SeparableFit", "WarmStartReport", "channel_importance", "factorize_separable", "fit_separable",
    "patch_moments", "permute_channels", "record_moments", "sort_channels", "take_images", "warm_start",
    "with_choice_branches",
]
