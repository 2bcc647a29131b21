"""Every family's networks keep their state-dict keys and shapes: shipped and pretrained weights load.

``tests/data/state_dict_keys.json`` was taken before the families moved into ``slimface.families``
(issue 21). For each family it records, per network -- the teacher generator, the supernet
(separable) generator, the discriminator, the teacher task's own nets and the supernet task's nets
(the distillation mappers and the student discriminator) -- the number of tensors, a sha256 of the
sorted ``key: shape`` lines and one short digest per two-level key prefix (so a failure names the
part that changed), at two sizes (64 px RGB, 128 px gray).

Regenerate only for a deliberate, documented format change:
``python tests/test_state_dict_keys.py --write``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

SNAPSHOT = Path(__file__).parent / "data" / "state_dict_keys.json"
FAMILIES = ("tpgan", "pim", "crgan")
SIZES = ((64, 3, 0.0625), (128, 1, 0.125))


def _get_family(name: str) -> Any:
    from slimface.families import get_family

    return get_family(name)


def _lines(module: nn.Module) -> list[str]:
    return sorted(f"{k}: {tuple(v.shape)}" for k, v in module.state_dict().items())


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def describe(module: nn.Module) -> dict[str, Any]:
    lines = _lines(module)
    parts: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        key = line.split(": ")[0]
        parts[".".join(key.split(".")[:2])].append(line)
    return {"count": len(lines), "sha256": _digest(lines),
            "parts": {p: _digest(v)[:12] for p, v in sorted(parts.items())}}


def _models(family: str, res: int, channels: int, width: float) -> dict[str, nn.Module]:
    from slimface.compress.ofa import OFATask

    fam = _get_family(family)
    torch.manual_seed(0)
    kw = dict(resolution=res, channels=channels, width_mult=width)
    teacher = fam.build_generator(separable=False, sub=None, **kw)
    supernet = fam.build_generator(separable=True, sub=None, **kw)
    disc = fam.build_discriminator(**kw)
    out: dict[str, nn.Module] = {"generator/teacher": teacher, "generator/supernet": supernet,
                                 "discriminator": disc}
    task = fam.make_teacher_task(teacher, disc, None, num_subjects=4, loss=None, lr=2e-4, seed=0)
    for name, net in task.nets.items():
        out[f"teacher_task/{name}"] = net
    ofa = OFATask(fam, supernet, teacher.eval(), disc)
    for name, net in ofa.nets.items():
        if name != "student":  # the supernet itself is above
            out[f"supernet_task/{name}"] = net
    return out


def snapshot() -> dict[str, Any]:
    snap: dict[str, Any] = {}
    for family in FAMILIES:
        for res, channels, width in SIZES:
            for name, net in _models(family, res, channels, width).items():
                snap[f"{family}/{name}/r{res}c{channels}w{width}"] = describe(net)
    return snap


def test_state_dict_keys_and_shapes_match_the_snapshot() -> None:
    expected = json.loads(SNAPSHOT.read_text())
    actual = snapshot()
    assert sorted(actual) == sorted(expected), "the set of snapshotted networks changed"
    bad = {}
    for name, want in expected.items():
        got = actual[name]
        if got["sha256"] != want["sha256"]:
            changed = sorted(p for p in set(want["parts"]) | set(got["parts"])
                             if want["parts"].get(p) != got["parts"].get(p))
            bad[name] = f"{want['count']} -> {got['count']} tensors; changed under {changed[:6]}"
    assert not bad, json.dumps(bad, indent=1)


if __name__ == "__main__":
    if "--write" not in sys.argv:
        pytest.main([__file__, "-q"])
    else:
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {SNAPSHOT}")
