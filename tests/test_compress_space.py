"""Config space of the compression engine, on a toy family defined here (also used by the other
test_compress_* modules: ``from test_compress_space import ...``)."""

from __future__ import annotations

from typing import Any, Mapping

import pytest
import torch
from torch import Tensor, nn

from slimface.compress.space import ConfigSpace, active_config, current_widths, macs_of, params_of
from slimface.errors import ConfigError
from slimface.models.blocks import ConvBlock, UpBlock, Widths, res_stack
from slimface.families import StudentSpec, register_family
from slimface.models.generator import Generator
from slimface.nn.channels import cat
from slimface.nn.super_layers import SuperConv2d, load_subnet_weights, set_widths, width_groups

TOY = "toy_compress"


class ToyGenerator(Generator):
    """A small ResNet-style frontalizer: stem, strided conv, residual stack, up-block, a skip
    concatenation (decoder ‖ stem) and an output conv; ``separable`` turns the k x k convs of the
    strided block, the residual blocks and the fuse block into depthwise-separable ones."""

    family = TOY

    def __init__(self, resolution: int, channels: int, width_mult: float, separable: bool,
                 sub: Mapping[str, int] | None) -> None:
        super().__init__(resolution, channels, width_mult, separable, sub)
        w = Widths(width_mult, sub)
        img = Widths.fixed(channels)
        e1, e2, d1, fu = w("enc1", 16), w("enc2", 32), w("dec1", 16), w("fuse", 16)
        self.enc1 = ConvBlock(img, e1, 3)
        self.enc2 = ConvBlock(e1, e2, 3, stride=2, separable=separable)
        self.res = res_stack(w, e2, "res", 2, 32, separable=separable)
        self.up = UpBlock(e2, d1)
        self.fuse = ConvBlock(cat(d1, e1), fu, 3, separable=separable)
        self.out = SuperConv2d(fu, img, 3)

    def forward_train(self, x: Tensor, landmarks: Tensor | None = None) -> dict[str, Tensor]:
        h1 = self.enc1(x)
        h = self.up(self.res(self.enc2(h1)))
        h = self.fuse(torch.cat([h, h1], dim=1))
        return {"image": torch.tanh(self.out(h))}


class ToyDisc(nn.Module):
    """Conditional patch D, called ``D(profile, frontal)`` like the project's PatchDiscriminator."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2 * channels, 16, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(16, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.LeakyReLU(0.2),
            nn.Conv2d(32, 1, 3, 1, 1),
        )

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.net(torch.cat([x, y], 1))


def _build_gen(resolution: int = 64, channels: int = 3, width_mult: float = 1.0, separable: bool = False,
               sub: Mapping[str, int] | None = None) -> ToyGenerator:
    return ToyGenerator(resolution, channels, width_mult, separable, sub)


class ToyFamily:
    """The toy family (a :class:`slimface.families.Family` without a teacher task)."""

    name = TOY
    gan_mode = "bce"
    loss_config = dict
    student_spec = StudentSpec(prunable={"enc2": (0.25, 1.0), "res.*": (0.25, 1.0), "dec1": (0.5, 1.0),
                                         "fuse": (0.5, 1.0)}, distill=["res", "fuse"])

    def build_generator(self, *, resolution: int = 64, channels: int = 3, width_mult: float = 1.0,
                        separable: bool = False, sub: Mapping[str, int] | None = None) -> ToyGenerator:
        return _build_gen(resolution, channels, width_mult, separable, sub)

    def build_discriminator(self, *, resolution: int = 64, channels: int = 3, width_mult: float = 1.0) -> ToyDisc:
        return ToyDisc(channels)

    def make_teacher_task(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the toy family has no teacher task")


TOY_FAMILY = register_family(ToyFamily())


def toy_supernet(resolution: int = 32, seed: int = 0) -> ToyGenerator:
    torch.manual_seed(seed)
    return _build_gen(resolution, separable=True)


def toy_batch(n: int = 4, resolution: int = 32, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "profile": torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1,
        "frontal": torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1,
        "landmarks": torch.rand(n, 5, 2, generator=g) * resolution,
    }


def toy_space(net: nn.Module | None = None) -> ConfigSpace:
    return ConfigSpace.from_supernet(TOY_FAMILY, net if net is not None else toy_supernet())


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: tiny convs on a shared 2-core machine run far faster without
    thread oversubscription (restored after each test)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------- tests
def test_space_groups_and_choices() -> None:
    space = toy_space()
    assert space.groups == sorted(["dec1", "enc2", "fuse", "res.0.mid", "res.1.mid"])  # enc1 not prunable
    assert space.choices["enc2"] == [8, 16, 24, 32]
    assert space.choices["dec1"] == [8, 16]
    assert space.size() == 2 * 4 * 2 * 4 * 4
    assert space.largest() == {"dec1": 16, "enc2": 32, "fuse": 16, "res.0.mid": 32, "res.1.mid": 32}
    assert space.smallest() == {"dec1": 8, "enc2": 8, "fuse": 8, "res.0.mid": 8, "res.1.mid": 8}
    assert len(list(space.enumerate())) == space.size()
    with pytest.raises(ValueError):
        list(space.enumerate(limit=10))


def test_encode_decode_roundtrip_and_errors() -> None:
    space = toy_space()
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        cfg = space.sample(g)
        s = space.encode(cfg)
        assert space.decode(s) == cfg
    assert space.encode(space.largest()) == "16_32_16_32_32"
    for bad in ("16_32_16_32", "16_32_16_32_32_8", "16_33_16_32_32", "16_x_16_32_32", ""):
        with pytest.raises(ConfigError) as e:
            space.decode(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        space.encode({"enc2": 32})


def test_sampling_deterministic_and_uniformish() -> None:
    space = toy_space()
    a = [space.sample(torch.Generator().manual_seed(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    g = torch.Generator().manual_seed(3)
    counts = {v: 0 for v in space.choices["enc2"]}
    n = 2000
    for _ in range(n):
        counts[space.sample(g)["enc2"]] += 1
    for v, c in counts.items():
        assert abs(c / n - 0.25) < 0.05, (v, c)
    # mutate with prob 0 keeps, prob 1 resamples; crossover takes each group from a parent
    big, small = space.largest(), space.smallest()
    assert space.mutate(big, 0.0, g) == big
    kids = [space.crossover(big, small, g) for _ in range(50)]
    assert all(all(k[gr] in (big[gr], small[gr]) for gr in space.groups) for k in kids)
    assert any(k != big and k != small for k in kids)
    muts = [space.mutate(big, 1.0, g) for _ in range(20)]
    assert any(m != big for m in muts)


def test_supernet_largest_equals_static_student() -> None:
    net = toy_supernet()
    space = toy_space(net)
    x = toy_batch()["profile"]
    net.eval()
    static = _build_gen(32, separable=True, sub=space.largest()).eval()
    with active_config(net, space.largest()):
        load_subnet_weights(net, static)
        y_sup = net(x)
    assert torch.allclose(static(x), y_sup, atol=1e-6)
    # and a narrow config really is a different, smaller network
    small = space.smallest()
    with active_config(net, small):
        y_small = net(x)
        assert current_widths(net) == small
    assert current_widths(net) is None
    assert not torch.allclose(y_small, y_sup)


def test_macs_params_monotone_and_cached() -> None:
    net = toy_supernet()
    space = toy_space(net)
    big, small = space.largest(), space.smallest()
    m_big, m_small = macs_of(net, big), macs_of(net, small)
    assert m_small < m_big
    assert params_of(net, small) < params_of(net, big)
    mid = dict(big, **{"res.0.mid": 16})
    assert m_small < macs_of(net, mid) < m_big
    assert macs_of(net, big, resolution=32) == m_big
    assert macs_of(toy_supernet(64), big) > m_big
    with pytest.raises(ValueError, match="built for 32px"):
        macs_of(net, big, resolution=64)
    # the supernet's width state is unchanged after counting
    assert current_widths(net) is None
    assert set(width_groups(net)) >= set(space.groups)
    set_widths(net, None)
