"""Every family's compressed student exports to ONNX and TorchScript-free formats and agrees with
PyTorch (the exporter traces the real forward signature, defaults included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slimface.compress.extract import student_space
from slimface.deploy.onnx_export import export_onnx
from slimface.deploy.runtime import check_onnx
from slimface.deploy.runtime import load_frontalizer
from slimface.families import build_generator


@pytest.mark.parametrize("family", ["tpgan", "crgan", "pim"])
def test_smallest_student_exports_to_onnx(family: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    _, space = student_space(family, 64, 3, 0.125)
    student = build_generator(family, 64, 3, 0.125, separable=True, sub=space.smallest()).eval()
    inputs = student.example_inputs()
    path = export_onnx(student, inputs, tmp_path / "m.onnx")
    assert check_onnx(student, path, inputs) < 1e-4
    rt = load_frontalizer(path)
    assert (rt.resolution, rt.channels) == (64, 3)
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).numpy()
    lm = np.repeat(inputs[1].numpy(), 2, axis=0)
    with torch.no_grad():
        ref = student(torch.from_numpy(x), torch.from_numpy(lm)).numpy()
    assert np.abs(np.asarray(rt(x, lm)) - ref).max() < 1e-4  # batch 2: the batch axis is dynamic
