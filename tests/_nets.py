"""Helpers shared by the model tests."""

from __future__ import annotations

from pathlib import Path

import torch


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm affine parameters and running statistics (seeded), so a test that slices,
    permutes or folds BN tensors would see a wrong one in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)  # type: ignore[union-attr]
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)  # type: ignore[union-attr]
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def assert_export_matches_supernet(net: torch.nn.Module, static: torch.nn.Module, cfg: dict, code: str,
                                   folder: "Path") -> torch.nn.Module:
    """The exported sub-network ``static`` computes what the supernet ``net`` computes as sub-network
    ``cfg`` (max abs diff < 1e-5), has the MACs the space prices it at, and survives save/load
    (written to ``folder`` with config string ``code``); returns the loaded export."""
    from slimface.compress.space import active_config, macs_of
    from slimface.export_format import load_export, save_export
    from slimface.nn.profile import count_macs

    x = static.example_inputs(2)
    with torch.no_grad(), active_config(net.eval(), cfg):
        ref = net(*x)
    with torch.no_grad():
        assert (static(*x) - ref).abs().max() < 1e-5
    assert count_macs(static, static.example_inputs(1)) == macs_of(net, cfg)
    save_export(static, folder, config=code, program=False)
    loaded = load_export(folder)
    with torch.no_grad():
        assert (loaded(*x) - ref).abs().max() < 1e-5
    return loaded
