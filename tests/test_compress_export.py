"""Export: static sub-network == supernet sub-network, counted cost == search's cost, file round trip,
a program that runs without slimface, and refusal of mismatched files."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimface.compress.extract import extract_subnet
from slimface.export_format import load_export, save_export
from slimface.compress.bn import recalibrate_bn
from slimface.compress.space import active_config, macs_of, params_of
from slimface.errors import CheckpointError
from slimface.nn.profile import count_macs, count_params
from test_compress_space import TOY_FAMILY, single_thread, toy_batch, toy_space, toy_supernet  # noqa: F401

RES = 64


def _setup():
    net = toy_supernet(RES)
    space = toy_space(net)
    cfg = dict(space.smallest(), enc2=24, **{"res.1.mid": 16})
    # non-trivial BN statistics for this sub-network (what fine-tuning/recalibration leaves behind)
    with active_config(net, cfg):
        recalibrate_bn(net, [toy_batch(4, RES, seed=s) for s in range(2)])
    return net.eval(), space, cfg


def test_export_equivalence_and_costs() -> None:
    net, space, cfg = _setup()
    static = extract_subnet(TOY_FAMILY, net, cfg, RES, 3, 1.0)
    assert static.sub == cfg and static.separable
    x = toy_batch(3, RES, seed=9)["profile"]
    with torch.no_grad(), active_config(net, cfg):
        ref = net(x)
    with torch.no_grad():
        out = static(x)
    assert (out - ref).abs().max().item() < 1e-5
    # the static net really has only the kept channels
    assert static.enc2[0].pointwise.weight.shape[0] == 24
    assert static.res[1].conv1.pointwise.weight.shape[0] == 16
    assert count_macs(static, static.example_inputs(1)) == macs_of(net, cfg)
    assert count_params(static) == params_of(net, cfg)
    assert sum(p.numel() for p in static.parameters()) == params_of(net, cfg)


def test_save_load_roundtrip_and_program_without_slimface(tmp_path: Path) -> None:
    net, space, cfg = _setup()
    static = extract_subnet(TOY_FAMILY.name, net, cfg, RES)
    arch_path = save_export(static, tmp_path / "exp", config=space.encode(cfg))
    meta = json.loads(arch_path.read_text())
    assert meta["config"] == space.encode(cfg)
    assert meta["macs"] == macs_of(net, cfg) and meta["params"] == params_of(net, cfg)
    assert meta["arch"]["sub"] == cfg and meta["arch"]["resolution"] == RES
    assert not list((tmp_path / "exp").glob(".tmp-*"))
    loaded = load_export(tmp_path / "exp")
    x, lm = static.example_inputs(3)
    x = toy_batch(3, RES, seed=3)["profile"]  # the program was captured with a dynamic batch
    with torch.no_grad():
        expected = static(x, lm)
        assert torch.equal(loaded(x, lm), expected)
    assert torch.equal(load_export(arch_path)(x, lm), expected)

    # the program runs in a fresh interpreter that cannot import slimface
    torch.save({"x": x, "lm": lm, "y": expected}, tmp_path / "io.pt")
    program = tmp_path / "exp" / meta["program"]
    code = f"""
import sys
sys.modules["slimface"] = None  # any import of slimface now fails
import torch
io = torch.load({str(tmp_path / 'io.pt')!r})
kind = {meta['program_kind']!r}
if kind == "torch.export":
    m = torch.export.load({str(program)!r}).module()
else:
    m = torch.jit.load({str(program)!r})
y = m(io["x"], io["lm"])
err = (y - io["y"]).abs().max().item()
assert err < 1e-5, err
print("ok", err)
"""
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


def test_load_refuses_mismatched_files(tmp_path: Path) -> None:
    net, space, cfg = _setup()
    a = save_export(extract_subnet(TOY_FAMILY, net, cfg, RES), tmp_path / "a", program=False).parent
    b = save_export(extract_subnet(TOY_FAMILY, net, space.largest(), RES), tmp_path / "b", program=False).parent
    assert json.loads((a / "arch.json").read_text())["program"] is None
    assert load_export(a).sub == cfg
    with pytest.raises(CheckpointError, match="128px was asked"):
        load_export(a, resolution=128)
    with pytest.raises(CheckpointError, match="'tpgan' was asked"):
        load_export(a, family="tpgan")
    # weights of another architecture next to a's arch.json
    shutil.copy(b / "model.safetensors", a / "model.safetensors")
    with pytest.raises(CheckpointError, match="checksum"):
        load_export(a)
    meta = json.loads((a / "arch.json").read_text())
    meta.pop("weights_sha256")
    (a / "arch.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as e:
        load_export(a)
    assert "\n" not in str(e.value) and "shape" in str(e.value)
    with pytest.raises(CheckpointError):
        load_export(tmp_path / "nothing-here")
    (b / "model.safetensors").write_bytes(b"garbage")
    meta_b = json.loads((b / "arch.json").read_text())
    meta_b.pop("weights_sha256")
    (b / "arch.json").write_text(json.dumps(meta_b))
    with pytest.raises(CheckpointError):
        load_export(b)


REAL = [f for f in ("tpgan", "pim", "crgan") if importlib.util.find_spec(f"slimface.models.{f}") is not None]


@pytest.mark.parametrize("name", ["tpgan", "pim", "crgan"])
def test_real_family_extract_equivalence(name: str, tmp_path: Path) -> None:
    if name not in REAL:
        pytest.skip(f"slimface.models.{name} is not in the tree yet")
    importlib.import_module(f"slimface.models.{name}")
    from slimface.compress.space import ConfigSpace
    from slimface.families import get_family

    family = get_family(name)
    torch.manual_seed(0)
    net = family.build_generator(resolution=64, channels=3, width_mult=0.125, separable=True, sub=None)
    space = ConfigSpace.from_supernet(family, net)
    cfg = space.sample(torch.Generator().manual_seed(4))
    x, lm = net.example_inputs(2)
    x = toy_batch(2, 64, seed=1)["profile"]
    with active_config(net, cfg):
        recalibrate_bn(net, [{"profile": x, "landmarks": lm}])
    net.eval()
    static = extract_subnet(family, net, cfg, 64, 3, 0.125)
    with torch.no_grad(), active_config(net, cfg):
        ref = net(x, lm)
    with torch.no_grad():
        assert (static(x, lm) - ref).abs().max().item() < 1e-5
    assert count_params(static) == params_of(net, cfg)
    if name != "crgan":  # counting MACs of the TP-GAN-like nets takes seconds; one family suffices
        return
    save_export(static, tmp_path / "e", config=space.encode(cfg), program=False)
    loaded = load_export(tmp_path / "e", resolution=64, family=name)
    with torch.no_grad():
        assert torch.equal(loaded(x, lm), static(x, lm))
