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


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_dense_students_keep_the_asked_fraction_of_every_width(tmp_path: Path) -> None:
    """benchmarks/int8_dense_students.py: a dense student at fraction f holds every width group at the
    allowed width nearest f of its full width (all of it at 1.0); a fraction outside (0, 1] is refused."""
    from slimface.compress.extract import student_space
    from slimface.nn.super_layers import width_groups

    bench = _script("int8_dense_students")
    supernet, space = student_space("tpgan", 128, 3, 1.0, separable=False)
    full = width_groups(supernet)
    assert bench.dense_config(1.0) == {g: max(ch) if g in full else ch[0] for g, ch in space.choices.items()}
    cfg = bench.dense_config(0.3)
    for g, ch in space.choices.items():
        if g in full:
            assert abs(cfg[g] - 0.3 * full[g]) == min(abs(c - 0.3 * full[g]) for c in ch)
    with pytest.raises(SystemExit, match="--fractions"):
        bench.main(["--from-run", str(tmp_path), "--fractions", "0"])


@pytest.mark.parametrize("name,args", [
    ("bench_full_size", ["--models", "tpgan", "--from-run", "{run}"]),
    ("int8_dense_students", ["--from-run", "{run}"]),
    ("int8_student", ["--fp32-run", "{run}", "--int8-run", "{run}"]),
])
def test_a_benchmark_on_an_unfinished_run_says_so_in_one_line(tmp_path: Path, name: str, args: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A run folder without a search result is a one-line error naming the missing file, not a traceback."""
    with pytest.raises(SystemExit) as exc:
        _script(name).main([a.format(run=tmp_path) for a in args] + ["--out", str(tmp_path / "o.json")])
    assert "result.json is missing; finish the run" in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "o.json").exists()
