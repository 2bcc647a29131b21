"""The student's kernel cap (``student.max_kernel``): a design choice that frees the MACs TP-GAN's
large full-resolution kernels hold, carried through build, warm start, export, profile and keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimface.compress.conv_types import build_supernet
from slimface.compress.extract import extract_subnet
from slimface.compress.space import ConfigSpace, macs_of
from slimface.compress.warmstart import warm_start
from slimface.config import load_config
from slimface.errors import ConfigError
from slimface.families import build_generator, generator_from_arch, get_family
from slimface.models.blocks import cap_kernels
from slimface.nn.super_layers import SuperConv2d, SuperConvTranspose2d

from _nets import assert_export_matches_supernet

REPO = Path(__file__).resolve().parents[1]
SIZE = dict(resolution=64, channels=3, width_mult=0.0625)


def _odd_kernels(net: torch.nn.Module) -> list[int]:
    return [m.kernel_size[0] for m in net.modules()
            if isinstance(m, SuperConv2d) and m.kernel_size[0] % 2 == 1]


@pytest.mark.parametrize("stride", [1, 2])
def test_a_capped_conv_keeps_the_centre_of_its_kernel_and_its_output_size(stride: int) -> None:
    conv = SuperConv2d(4, 6, 7, stride)
    wide = conv.weight.detach().clone()
    x = torch.randn(1, 4, 17, 17)
    size = conv(x).shape
    assert cap_kernels(torch.nn.Sequential(conv), 3) == ["0"]
    assert conv.kernel_size == (3, 3) and torch.equal(conv.weight, wide[:, :, 2:5, 2:5])
    assert conv(x).shape == size
    # a kernel whose outer taps are zero computes the same after the cap
    five = SuperConv2d(4, 6, 5, stride)
    with torch.no_grad():
        five.weight[:, :, [0, 4], :] = 0
        five.weight[:, :, :, [0, 4]] = 0
        before = five(x)
    cap_kernels(five, 3)
    assert torch.allclose(five(x), before, atol=1e-6)


def test_small_even_and_transposed_kernels_are_left_alone() -> None:
    net = torch.nn.Sequential(SuperConv2d(4, 4, 3), SuperConv2d(4, 4, 2, padding=0),
                              SuperConvTranspose2d(4, 4, 4, stride=2, padding=1))
    assert cap_kernels(net, 3) == []
    with pytest.raises(ConfigError, match="odd"):
        cap_kernels(net, 4)


def test_the_capped_tpgan_student_has_no_large_kernel_and_a_lower_floor() -> None:
    fam = get_family("tpgan")
    plain = build_supernet("tpgan", **SIZE)
    capped = build_supernet("tpgan", max_kernel=3, **SIZE)
    assert max(_odd_kernels(plain)) == 7 and max(_odd_kernels(capped)) == 3
    assert "max_kernel" not in plain.arch() and capped.arch()["max_kernel"] == 3
    smallest = [macs_of(n, ConfigSpace.from_supernet(fam, n).smallest()) for n in (plain, capped)]
    assert smallest[1] < 0.75 * smallest[0]
    # the arch rebuilds the capped design (export format, ONNX, latency tables)
    from slimface.deploy.latency_table import _build, _design

    shapes = {k: v.shape for k, v in capped.state_dict().items()}
    for again in (generator_from_arch(capped.arch()), _build("tpgan", {"family": "tpgan", **SIZE, **_design(capped)}, None)):
        assert {k: v.shape for k, v in again.state_dict().items()} == shapes


@pytest.mark.parametrize("setting", ["all", "search"])
def test_a_capped_subnetwork_exports_as_its_supernet_slice(setting: str, tmp_path: Path) -> None:
    net = build_supernet("tpgan", setting=setting, max_kernel=3, **SIZE)
    space = ConfigSpace.from_supernet(get_family("tpgan"), net)
    cfg = space.sample(torch.Generator().manual_seed(5))
    static = extract_subnet("tpgan", net, cfg, **SIZE)
    assert static.max_kernel == 3 and max(_odd_kernels(static)) == 3
    loaded = assert_export_matches_supernet(net, static, cfg, space.encode(cfg), tmp_path / "export")
    assert loaded.max_kernel == 3


def test_the_warm_start_copies_the_centre_of_the_teachers_kernels() -> None:
    teacher = build_generator("tpgan", **SIZE)
    student = build_supernet("tpgan", setting="none", max_kernel=3, **SIZE)
    report = warm_start(student, teacher, sort=False)
    stem = "encoder.s128.conv.0.weight"
    assert teacher.state_dict()[stem].shape[-1] == 7
    assert torch.equal(student.state_dict()[stem], teacher.state_dict()[stem][:, :, 2:5, 2:5])
    assert not report.kept  # every tensor came from the teacher
    assert teacher.get_submodule("encoder.s128.conv.0").kernel_size == (7, 7)  # the teacher is unchanged


def test_the_setting_is_checked_and_stays_out_of_keys_at_its_default() -> None:
    from slimface import stage_keys as K
    from slimface.pipeline_config import PipelineConfig

    def cfg(**sets: object):  # noqa: ANN202
        return load_config(PipelineConfig, REPO / "configs" / "tiny.yaml", sets)

    with pytest.raises(ConfigError, match="student.max_kernel must be an odd"):
        cfg(**{"student.max_kernel": 4})
    base, capped = cfg(), cfg(**{"student.max_kernel": 3})
    for stage in ("supernet.tpgan", "search.tpgan", "finetune.tpgan"):
        assert "max_kernel" not in str(K.own_settings(base, stage)), stage
        assert K.own_settings(capped, stage) != K.own_settings(base, stage), stage
