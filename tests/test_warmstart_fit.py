"""The activation fit of the warm start: separable convs fitted to their teacher convs on recorded
inputs instead of by the kernel's rank-1 SVD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.compress.config import OFAConfig
from slimface.compress.space import ConfigSpace
from slimface.compress.warmstart import (
    factorize_separable, fit_separable, patch_moments, record_moments, take_images, warm_start,
)
from slimface.config import from_dict
from slimface.errors import ConfigError
from slimface.families import get_family
from slimface.nn.super_layers import SeparableConv2d, SuperConv2d

C, O = 8, 12


def _inputs(n: int, gen: torch.Generator) -> Tensor:
    """Correlated, spatially smooth, non-zero-mean activations: 8 channels mixed from 3 smooth
    sources plus a little noise (far from white, where SVD would already be the best fit)."""
    z = F.avg_pool2d(F.pad(torch.randn(n, 3, 12, 12, generator=gen), (1, 1, 1, 1), mode="replicate"), 3, 1)
    mix = torch.randn(C, 3, generator=torch.Generator().manual_seed(5))
    return torch.einsum("ci,nihw->nchw", mix, z) + 0.05 * torch.randn(n, C, 12, 12, generator=gen) + 0.3


def _load(student: SeparableConv2d, dw: Tensor, pw: Tensor, bias: Tensor | None) -> None:
    with torch.no_grad():
        student.depthwise.weight.copy_(dw)
        student.pointwise.weight.copy_(pw)
        if student.pointwise.bias is not None:
            student.pointwise.bias.copy_(bias if bias is not None else torch.zeros(O))


def _rel_error(student: nn.Module, teacher: nn.Module, x: Tensor) -> float:
    with torch.no_grad():
        y, z = student(x), teacher(x)
    return float((y - z).norm() / z.norm())


@pytest.mark.parametrize("kernel,stride,bias", [(3, 1, True), (5, 2, False)])
def test_fit_beats_svd_on_held_out_inputs_and_never_raises_the_fitted_error(kernel: int, stride: int,
                                                                             bias: bool) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    teacher = SuperConv2d(C, O, kernel, stride, bias=True)
    student = SeparableConv2d(C, O, kernel, stride, bias=bias)
    train, held_out = _inputs(48, gen), _inputs(48, gen)
    moments = record_moments(teacher, {"": teacher}, [(train,)], positions=10**6)[""]
    fit = fit_separable(teacher.weight, teacher.bias, moments, student_bias=bias)

    dw, pw, _ = factorize_separable(teacher.weight)
    _load(student, dw, pw, teacher.bias)
    svd_train, svd_held = _rel_error(student, teacher, train), _rel_error(student, teacher, held_out)
    # the moments measure the real conv's error (all positions recorded): same patches, same order
    assert fit.error_svd == pytest.approx(svd_train, rel=1e-4)
    _load(student, fit.depthwise, fit.pointwise, fit.bias)
    fit_train, fit_held = _rel_error(student, teacher, train), _rel_error(student, teacher, held_out)
    assert fit.error == pytest.approx(fit_train, rel=1e-4)
    assert fit.improved and fit_train < 0.8 * svd_train
    assert fit_held < 0.8 * svd_held


def test_fit_keeps_the_svd_weights_when_the_fit_cannot_improve() -> None:
    """A kernel that is exactly separable: the SVD is already exact, the fit returns it unchanged."""
    gen = torch.Generator().manual_seed(2)
    dw = torch.randn(C, 1, 3, 3, generator=gen)
    pw = torch.randn(O, C, 1, 1, generator=gen)
    weight = pw[:, :, 0, 0, None, None] * dw[None, :, 0]
    conv = nn.Conv2d(C, O, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    moments = patch_moments(_inputs(16, gen), conv, positions=32, generator=gen)
    fit = fit_separable(conv.weight, None, moments, student_bias=False)
    d0, p0, _ = factorize_separable(weight)
    assert not fit.improved and fit.error <= fit.error_svd < 1e-5
    assert torch.equal(fit.depthwise, d0) and torch.equal(fit.pointwise, p0) and fit.bias is None


def test_fit_error_never_exceeds_the_svd_start_on_the_fitted_data() -> None:
    """On sub-sampled positions, white inputs and few samples too: the returned error is at most the
    SVD's on the same moments, whatever the data."""
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        conv = nn.Conv2d(C, O, 3, padding=1)
        x = torch.randn(2 + seed, C, 6, 6, generator=gen) if seed % 2 else _inputs(2, gen)
        moments = patch_moments(x, conv, positions=5, generator=gen)
        fit = fit_separable(conv.weight, conv.bias, moments, student_bias=True, rounds=2)
        assert fit.error <= fit.error_svd


def test_take_images_cuts_the_last_batch() -> None:
    batches = [(torch.zeros(4, 1), torch.ones(4, 2)) for _ in range(5)]
    taken = take_images(iter(batches), 10)
    assert [b[0].shape[0] for b in taken] == [4, 4, 2] and taken[-1][1].shape == (2, 2)


def test_warm_start_fit_config_is_validated() -> None:
    cfg = from_dict(OFAConfig, {"warm_start": True, "warm_start_fit": "activations", "warm_start_fit_images": 8})
    assert cfg.warm_start_fit == "activations" and cfg.warm_start_fit_images == 8
    assert OFAConfig().warm_start_fit == "svd"
    with pytest.raises(ConfigError, match="warm_start_fit_images must be >= 1"):
        from_dict(OFAConfig, {"warm_start_fit_images": 0})
    with pytest.raises(ConfigError, match="warm_start_fit"):
        from_dict(OFAConfig, {"warm_start_fit": "lbfgs"})


def test_warm_start_fit_changes_only_factorised_convs_on_a_family_generator() -> None:
    family = get_family("tpgan")
    kw = dict(resolution=64, channels=3, width_mult=0.0625)
    torch.manual_seed(3)
    teacher = family.build_generator(separable=False, sub=None, **kw).eval()
    groups = ConfigSpace.from_supernet(family, family.build_generator(separable=True, sub=None, **kw)).groups
    torch.manual_seed(4)
    svd = family.build_generator(separable=True, sub=None, **kw)
    torch.manual_seed(4)
    fitted = family.build_generator(separable=True, sub=None, **kw)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}

    gen = torch.Generator().manual_seed(5)
    x, lm = teacher.example_inputs(3)  # type: ignore[operator]
    batches = [(torch.rand(x.shape, generator=gen) * 2 - 1, lm) for _ in range(2)]
    plain = warm_start(svd, teacher, groups)
    rng = torch.random.get_rng_state()
    report = warm_start(fitted, teacher, groups, batches=iter(batches), images=5, positions=16, budget_mb=32.0)
    assert torch.equal(torch.random.get_rng_state(), rng)  # training starts as after the SVD path

    assert report.fit_images == 5 and report.fit_layers == plain.factorized > 0
    assert 0 < report.fitted <= report.fit_layers and report.error_fit < report.error_svd
    assert (report.copied, report.kept, report.factorized) == (plain.copied, plain.kept, plain.factorized)
    assert "activation fit on 5 teacher inputs" in report.summary()
    separable = {n for n, m in fitted.named_modules() if isinstance(m, SeparableConv2d)}
    a, b = svd.state_dict(), fitted.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.rsplit(".", 2)[0] in separable for k in changed), sorted(changed)[:3]
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
