"""benchmarks/int8_conv_kernels.py times the graphs it claims to: a chain of 4 convs + LeakyReLU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("int8_conv_kernels", ROOT / "benchmarks" / "int8_conv_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.mark.parametrize("depthwise,kernel", [(False, 3), (False, 1), (True, 5)])
def test_chain_graph_equals_the_torch_conv_chain(tmp_path: Path, depthwise: bool, kernel: int) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    bench = _bench()
    path = tmp_path / "chain.onnx"
    bench._chain(path, channels=8, size=12, kernel=kernel, depthwise=depthwise)
    model = onnx.load(str(path))
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
    x = np.random.default_rng(0).standard_normal((1, 8, 12, 12)).astype(np.float32)
    y = torch.from_numpy(x)
    for i in range(4):
        y = F.leaky_relu(F.conv2d(y, weights[f"w{i}"], weights[f"b{i}"], padding=kernel // 2,
                                  groups=8 if depthwise else 1), 0.2)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert out.shape == (1, 8, 12, 12)
    np.testing.assert_allclose(out, y.numpy(), atol=1e-5)
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 4
