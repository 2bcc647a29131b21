"""Latency look-up tables per runtime: what a sub-network costs on *this* machine, without running it.

Why: MACs and speed part ways (depthwise convs, small channel counts, int8 kernels that lose to fp32),
so the search should price candidates the way once-for-all does, with measured per-layer latency of
the target runtime.

What: every conv / transposed conv / linear of a family's student supernet sits at a *site* (op,
kernel, stride, padding, input size, memory layout) and takes its channel counts from the width
groups. :func:`build_table` times, at batch 1, each site over the channel counts the design space
allows (all of them when there are few, else a grid of up to ``max_grid`` values per axis, read
back by bilinear interpolation), then fits ``predicted = overhead_ms + scale * sum(layers)`` on a
few whole sub-networks measured in the same runtime (element-wise ops, copies and per-call costs
are what the overhead and scale absorb). :class:`LatencyModel` prices any config of the supernet
from the table; on a supernet of searched conv types (``student.separable: search``) both branches
of every choice conv are tabled and a config is priced with the branch its ``conv:`` key picks.
Runtimes: ``torch`` (eager fp32, batch norms folded), ``ort`` (ONNX Runtime fp32),
``ort-int8`` (ONNX Runtime, static QDQ int8 as :func:`~slimface.deploy.quantize.quantize_int8`
makes it; its table also keeps the fp32 time of each layer, so callers can leave the layers where
int8 does not pay in fp32).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fnmatch
import itertools
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimface.compress.config import parse_latency
from slimface.errors import CheckpointError, ConfigError

__all__ = [
    "RUNTIMES",
    "Site",
    "LayerRef",
    "LatencyTable",
    "LatencyModel",
    "design_layers",
    "build_table",
    "measure_subnet",
    "measure_relative",
    "subnet_runner",
    "parse_latency",
    "spread_sample",
    "search_latency_model",
    "MappedLatencyModel",
    "net_runner",
    "slow_int8_modules",
    "conv_nodes_by_module",
    "fp32_nodes",
    "module_matches",
]

RUNTIMES = ("torch", "ort", "ort-int8")
SCHEMA = "slimface.latency_table/1"


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} is unknown; use one of {', '.join(RUNTIMES)}")
    return runtime


# ----------------------------------------------------------------------------- layers of a design space
@dataclass(frozen=True)
class Site:
    """Where a layer sits: everything about it except its channel counts."""

    op: str                 # conv | dwconv | deconv | linear
    k: int = 1
    stride: int = 1
    padding: int = 0
    output_padding: int = 0
    h: int = 1              # input height / width (1 for linear)
    w: int = 1
    channels_last: bool = False  # PyTorch memory layout of the input (ignored by ONNX Runtime)

    def key(self) -> str:
        return (f"{self.op}_k{self.k}s{self.stride}p{self.padding}o{self.output_padding}_{self.h}x{self.w}"
                + ("_cl" if self.channels_last else ""))

    @classmethod
    def from_key_dict(cls, d: Mapping[str, Any]) -> "Site":
        return cls(**{k: d[k] for k in ("op", "k", "stride", "padding", "output_padding", "h", "w", "channels_last")})


@dataclass
class LayerRef:
    """One layer of a supernet: its module name, site and channel layouts (or fixed counts)."""

    name: str
    site: Site
    in_layout: Any    # Chans (follows the widths) or int (fixed)
    out_layout: Any
    out_pixels: int = 1  # output positions per channel (H x W; 1 for linear)
    choice: tuple[str, int] | None = None  # in a choice conv: (its conv key, the type that runs this layer)

    def active(self, cfg: Mapping[str, int] | None) -> bool:
        """Whether the layer runs in ``cfg`` (a choice conv's branch only when ``cfg`` picks its type;
        a missing key means separable)."""
        from slimface.nn.super_layers import branch_runs

        return branch_runs(cfg, self.choice)

    def channels(self, cfg: Mapping[str, int] | None) -> tuple[int, int]:
        def n(layout: Any) -> int:
            return int(layout) if isinstance(layout, int) else int(layout.active_total(cfg))

        cin, cout = n(self.in_layout), n(self.out_layout)
        return (cout, cout) if self.site.op == "dwconv" else (cin, cout)

    def groups(self) -> set[str]:
        out: set[str] = set()
        for layout in (self.in_layout, self.out_layout):
            if not isinstance(layout, int):
                out |= layout.groups()
        return out


def _no_layout(layer: LayerRef) -> LayerRef:
    return LayerRef(layer.name, Site(**{**asdict(layer.site), "channels_last": False}), layer.in_layout,
                    layer.out_layout, layer.out_pixels, layer.choice)


def _pair(v: Any) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def design_layers(supernet: nn.Module, example_inputs: tuple | None = None, both_types: bool = True) -> list[LayerRef]:
    """The supernet's convs / transposed convs / linears in forward order, from one probe forward;
    with choice convs (``student.separable: search``) and ``both_types`` a second probe, every choice
    flipped, adds the branches the first did not run, each tagged with its conv key and type
    (:attr:`LayerRef.choice`)."""
    from slimface.nn.super_layers import SuperMixin, probe_layers

    inputs = example_inputs if example_inputs is not None else supernet.example_inputs(1)  # type: ignore[operator]
    names = {id(m): n for n, m in supernet.named_modules()}
    layers: list[LayerRef] = []

    def visit(module: nn.Module, x: torch.Tensor, out: Any, first: bool, tag: tuple[str, int] | None) -> None:
        super_ = isinstance(module, SuperMixin)
        if isinstance(module, nn.Linear):
            site = Site("linear")
            cin, cout = x.shape[-1], out.shape[-1]
        else:
            depthwise = bool(getattr(module, "depthwise", False)) or (
                isinstance(module, nn.Conv2d) and module.groups > 1)
            op = "deconv" if isinstance(module, nn.ConvTranspose2d) else ("dwconv" if depthwise else "conv")
            cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
            site = Site(op, _pair(module.kernel_size), _pair(module.stride), _pair(module.padding),
                        _pair(getattr(module, "output_padding", 0)), int(x.shape[-2]), int(x.shape[-1]), bool(cl))
            cin, cout = x.shape[1], out.shape[1]
        in_layout = module.in_chans if super_ else int(cin)  # type: ignore[attr-defined]
        out_layout = module.out_chans if super_ else int(cout)  # type: ignore[attr-defined]
        pixels = int(out.shape[-1] * out.shape[-2]) if out.dim() == 4 else 1
        layers.append(LayerRef(names.get(id(module), ""), site, in_layout, out_layout, pixels, tag))

    probe_layers(supernet, inputs, visit, both_types)
    return layers


def _needed(layers: Sequence[LayerRef], choices: Mapping[str, Sequence[int]],
            ) -> dict[str, tuple[Site, set[tuple[int, int]]]]:
    """Per site: every (c_in, c_out) the design space can give its layers."""
    out: dict[str, tuple[Site, set[tuple[int, int]]]] = {}
    for layer in layers:
        gs = sorted(layer.groups() & set(choices))
        pairs = out.setdefault(layer.site.key(), (layer.site, set()))[1]
        for combo in itertools.product(*(choices[g] for g in gs)):
            pairs.add(layer.channels(dict(zip(gs, combo))))
    return out


def _both_layouts(needed: dict[str, tuple[Site, set[tuple[int, int]]]]) -> dict[str, tuple[Site, set[tuple[int, int]]]]:
    """``needed`` plus each conv / transposed conv / linear site in the other PyTorch memory layout:
    with searched conv types a layer's input layout follows the types chosen before it (depthwise
    convs always get channels-last input)."""
    out = {k: (site, set(pairs)) for k, (site, pairs) in needed.items()}
    for site, pairs in needed.values():
        if site.op in ("conv", "deconv"):
            other = Site(**{**asdict(site), "channels_last": not site.channels_last})
            out.setdefault(other.key(), (other, set()))[1].update(pairs)
    return out


def _subsample(values: Sequence[int], n: int) -> list[int]:
    vals = sorted(set(int(v) for v in values))
    if len(vals) <= n:
        return vals
    idx = sorted(set(int(round(i)) for i in np.linspace(0, len(vals) - 1, n)))
    return [vals[i] for i in idx]


# ----------------------------------------------------------------------------- timing one layer
def _median_ms(fn: Callable[[], Any], warmup: int = 3, min_runs: int = 9, max_runs: int = 40,
               budget_s: float = 0.15, quantile: float = 0.5) -> float:
    """Wall time of ``fn`` in ms (the ``quantile`` of the runs; median by default): ``min_runs`` at
    least, more while under ``budget_s``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    if quantile == 0.5:
        return statistics.median(times) * 1000.0
    return float(np.quantile(times, quantile)) * 1000.0


#: one-layer times are the lower quartile of their runs: on a shared machine other load only adds
#: time, and a layer's run is short enough that most runs escape it
LAYER_QUANTILE = 0.25


def _robust_ms(fn: Callable[[], Any], warmup: int, runs: int, blocks: int = 5) -> float:
    """The lowest of ``blocks`` medians of ``runs / blocks`` runs: other load on a shared machine
    only ever adds time, so a block it hit is outvoted."""
    per = max(3, runs // blocks)
    return min(_median_ms(fn, warmup=warmup if i == 0 else 1, min_runs=per, max_runs=per, budget_s=0)
               for i in range(blocks))


def _torch_layer(site: Site, cin: int, cout: int) -> Callable[[], Any]:
    g = torch.Generator().manual_seed(cin * 1000 + cout)
    if site.op == "linear":
        x = torch.randn(1, cin, generator=g)
        w = torch.randn(cout, cin, generator=g) * 0.05
        return lambda: F.linear(x, w)
    x = torch.randn(1, cin, site.h, site.w, generator=g)
    if site.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    b = torch.zeros(cout)
    if site.op == "deconv":
        w = torch.randn(cin, cout, site.k, site.k, generator=g) * 0.05
        return lambda: F.conv_transpose2d(x, w, b, site.stride, site.padding, site.output_padding)
    groups = cin if site.op == "dwconv" else 1
    w = torch.randn(cout, cin // groups, site.k, site.k, generator=g) * 0.05
    return lambda: F.conv2d(x, w, b, site.stride, site.padding, 1, groups)


def _onnx_layer(site: Site, cin: int, cout: int, int8: bool) -> tuple[bytes, dict[str, np.ndarray]]:
    """A one-node ONNX model of the layer (fp32 Conv/ConvTranspose/Gemm, or a uint8 -> uint8
    QLinearConv with per-channel int8 weights, the kernel ORT runs for a quantized conv) and feeds."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(cin * 1000 + cout)
    inits: list[Any] = []
    if site.op == "linear":
        x_shape = [1, cin]
        w = (rng.standard_normal((cout, cin)) * 0.05).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "W"))
        node = helper.make_node("Gemm", ["X", "W"], ["Y"], transB=1)
        y_shape = [1, cout]
        x_type = TensorProto.FLOAT
    else:
        x_shape = [1, cin, site.h, site.w]
        pads = [site.padding] * 4
        if site.op == "deconv":
            w = (rng.standard_normal((cin, cout, site.k, site.k)) * 0.05).astype(np.float32)
            inits += [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(cout, np.float32), "B")]
            node = helper.make_node("ConvTranspose", ["X", "W", "B"], ["Y"], kernel_shape=[site.k] * 2,
                                    strides=[site.stride] * 2, pads=pads,
                                    output_padding=[site.output_padding] * 2)
            x_type = TensorProto.FLOAT
        else:
            groups = cin if site.op == "dwconv" else 1
            wshape = (cout, cin // groups, site.k, site.k)
            attrs = dict(kernel_shape=[site.k] * 2, strides=[site.stride] * 2, pads=pads, group=groups)
            if int8:
                w8 = rng.integers(-64, 64, wshape).astype(np.int8)
                inits += [
                    numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
                    numpy_helper.from_array(np.array(128, np.uint8), "xz"),
                    numpy_helper.from_array(w8, "W"),
                    numpy_helper.from_array(np.full(cout, 0.01, np.float32), "ws"),
                    numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
                    numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
                    numpy_helper.from_array(np.array(128, np.uint8), "yz"),
                    numpy_helper.from_array(np.zeros(cout, np.int32), "B"),
                ]
                node = helper.make_node("QLinearConv", ["X", "xs", "xz", "W", "ws", "wz", "ys", "yz", "B"], ["Y"],
                                        **attrs)
                x_type = TensorProto.UINT8
            else:
                w = (rng.standard_normal(wshape) * 0.05).astype(np.float32)
                inits += [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(cout, np.float32), "B")]
                node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], **attrs)
                x_type = TensorProto.FLOAT
        y_shape = None
    x_info = helper.make_tensor_value_info("X", x_type, x_shape)
    y_info = helper.make_tensor_value_info("Y", x_type, y_shape)
    graph = helper.make_graph([node], "layer", [x_info], [y_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    if x_type == TensorProto.UINT8:
        feed = rng.integers(0, 256, x_shape).astype(np.uint8)
    else:
        feed = rng.standard_normal(x_shape).astype(np.float32)
    return model.SerializeToString(), {"X": feed}


def _ort_session(model: bytes | str, threads: int, **kw: Any) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"], **kw)


def _ort_call_overhead(threads: int) -> float:
    """ms of one ``session.run`` that does (almost) nothing: subtracted from every one-layer time,
    since a whole network pays it once, not once per layer."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8, 4, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 8, 4, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "id", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    sess = _ort_session(model.SerializeToString(), threads)
    feed = {"X": np.zeros((1, 8, 4, 4), np.float32)}
    return _median_ms(lambda: sess.run(None, feed), warmup=20, min_runs=200, max_runs=200, quantile=LAYER_QUANTILE)


def _time_point(runtime: str, site: Site, cin: int, cout: int, threads: int, call_overhead: float) -> dict[str, float]:
    """``{"ms": runtime time, "fp32_ms": ORT fp32 time (ort-int8 only)}`` of one layer at batch 1."""
    if runtime == "torch":
        fn = _torch_layer(site, cin, cout)
        with torch.inference_mode():
            return {"ms": _median_ms(fn, quantile=LAYER_QUANTILE)}

    def ort_ms(int8: bool) -> float:
        model, feed = _onnx_layer(site, cin, cout, int8)
        sess = _ort_session(model, threads)
        return max(0.0, _median_ms(lambda: sess.run(None, feed), quantile=LAYER_QUANTILE) - call_overhead)

    fp32 = ort_ms(False)
    if runtime == "ort":
        return {"ms": fp32}
    # ConvTranspose has no int8 kernel on ORT's CPU provider and stays fp32 (quantize.DEFAULT_OP_TYPES
    # leaves it out); a linear layer is timed in fp32 too (slimface's generators have at most a few)
    int8 = ort_ms(True) if site.op in ("conv", "dwconv") else fp32
    return {"ms": int8, "fp32_ms": fp32}


# ----------------------------------------------------------------------------- the table
@dataclass
class SiteTable:
    """Timed (c_in, c_out) grid of one site; ``cout`` is empty for depthwise convs (c_in = c_out)."""

    site: Site
    cin: list[int]
    cout: list[int]
    ms: list[list[float]]                 # [i_cin][i_cout] (one column for depthwise)
    fp32_ms: list[list[float]] | None = None

    def lookup(self, cin: int, cout: int, fp32: bool = False) -> float:
        grid = np.asarray(self.fp32_ms if fp32 and self.fp32_ms is not None else self.ms, dtype=np.float64)
        if not self.cout:
            return max(0.0, _interp1(self.cin, grid[:, 0], cin))
        # bilinear in (c_in, c_out), linear extrapolation past the grid's edges
        col = np.array([_interp1(self.cin, grid[:, j], cin) for j in range(len(self.cout))])
        return max(0.0, _interp1(self.cout, col, cout))

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {**asdict(self.site), "cin": self.cin, "cout": self.cout, "ms": self.ms}
        if self.fp32_ms is not None:
            d["fp32_ms"] = self.fp32_ms
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SiteTable":
        return cls(Site.from_key_dict(d), list(d["cin"]), list(d["cout"]), [list(r) for r in d["ms"]],
                   [list(r) for r in d["fp32_ms"]] if d.get("fp32_ms") is not None else None)


def _interp1(xs: Sequence[int], ys: Sequence[float], x: float) -> float:
    if len(xs) == 1:
        return float(ys[0])
    i = int(np.searchsorted(xs, x))
    i = min(max(i, 1), len(xs) - 1)
    x0, x1 = xs[i - 1], xs[i]
    t = (x - x0) / (x1 - x0)
    return float(ys[i - 1] + t * (ys[i] - ys[i - 1]))


@dataclass
class LatencyTable:
    """Per-site latency grids of one runtime on one machine, plus the fitted per-network overhead."""

    runtime: str
    threads: int
    model: dict[str, Any]
    sites: dict[str, SiteTable]
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    overhead_ms: float = 0.0
    scale: float = 1.0
    ms_per_melem: float = 0.0   # fitted cost per million activation elements (element-wise ops, copies)
    fit: list[dict[str, Any]] = field(default_factory=list)
    call_overhead_ms: float = 0.0
    created: str = ""
    build_seconds: float = 0.0
    teacher_ms: float | None = None  # the family's teacher at this size in this runtime (for "10x" budgets)

    def layer_ms(self, site: Site, cin: int, cout: int, fp32: bool = False) -> float:
        entry = self.sites.get(site.key())
        if entry is None:
            raise ConfigError(f"latency table has no entry for layer site {site.key()}; it was built for "
                              f"{self.model}: rebuild it for this model (slimface latency-table)")
        return entry.lookup(cin, cout, fp32)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "runtime": self.runtime, "threads": self.threads, "model": self.model,
            "machine": self.machine, "versions": self.versions, "created": self.created,
            "build_seconds": self.build_seconds, "call_overhead_ms": self.call_overhead_ms,
            "teacher_ms": self.teacher_ms,
            "fit": {"overhead_ms": self.overhead_ms, "scale": self.scale, "ms_per_melem": self.ms_per_melem,
                    "subnets": self.fit},
            "sites": {k: v.as_dict() for k, v in sorted(self.sites.items())},
        }

    def save(self, path: str | Path) -> Path:
        from slimface.fileio import atomic_write

        return atomic_write(Path(path), json.dumps(self.as_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            if d.get("schema") != SCHEMA:
                raise KeyError("schema")
            fit = d.get("fit", {})
            return cls(
                runtime=check_runtime(d["runtime"]), threads=int(d["threads"]), model=dict(d["model"]),
                sites={k: SiteTable.from_dict(v) for k, v in d["sites"].items()},
                machine=dict(d.get("machine", {})), versions=dict(d.get("versions", {})),
                overhead_ms=float(fit.get("overhead_ms", 0.0)), scale=float(fit.get("scale", 1.0)),
                ms_per_melem=float(fit.get("ms_per_melem", 0.0)),
                fit=list(fit.get("subnets", [])), call_overhead_ms=float(d.get("call_overhead_ms", 0.0)),
                created=str(d.get("created", "")), build_seconds=float(d.get("build_seconds", 0.0)),
                teacher_ms=None if d.get("teacher_ms") is None else float(d["teacher_ms"]),
            )
        except FileNotFoundError:
            raise CheckpointError(f"latency table {path} does not exist; build it with slimface latency-table") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: not a slimface latency table ({type(e).__name__}: {e}); "
                                  "rebuild it with slimface latency-table") from None


class LatencyModel:
    """Predicted latency (ms, batch 1) of any config of ``supernet`` from a :class:`LatencyTable`.

    ``int8_where_faster`` (ort-int8 tables): each conv is priced at the faster of its int8 and fp32
    times, i.e. as quantized by :func:`fp32_layers`' selection.
    """

    def __init__(self, table: LatencyTable, supernet: nn.Module, int8_where_faster: bool = False,
                 layers: Sequence[LayerRef] | None = None) -> None:
        from slimface.nn.super_layers import conv_choices

        self.table = table
        self.layers = list(layers) if layers is not None else design_layers(supernet)
        # PyTorch's memory layout of a layer's input depends on the types of the choice convs before
        # it (a separable conv hands on channels-last): priced per type combination, from a probe
        self._probe = supernet if table.runtime == "torch" and conv_choices(supernet) else None
        self._by_types: dict[tuple[tuple[str, int], ...], list[LayerRef]] = {}
        if table.runtime != "torch":  # ONNX Runtime does not see PyTorch's memory layout
            self.layers = [_no_layout(ly) for ly in self.layers]
        self.int8_where_faster = int8_where_faster and table.runtime == "ort-int8"
        missing = sorted({ly.site.key() for ly in self.layers} - set(table.sites))
        if missing:
            raise ConfigError(f"latency table ({table.model}) lacks layer site {missing[0]} of this supernet; "
                              "rebuild it for this model, resolution and width (slimface latency-table)")

    def active_layers(self, cfg: Mapping[str, int] | None) -> list[LayerRef]:
        """The layers that run in ``cfg``: a choice conv's branch only when ``cfg`` picks its type
        (with their PyTorch memory layouts under that mix, for a torch table)."""
        if self._probe is None:
            return [ly for ly in self.layers if ly.active(cfg)]
        from slimface.compress.space import active_config
        from slimface.nn.super_layers import current_conv_choices, is_conv_key

        with active_config(self._probe, {k: v for k, v in (cfg or {}).items() if is_conv_key(k)}):
            types = tuple(sorted(current_conv_choices(self._probe).items()))
            if types not in self._by_types:
                self._by_types[types] = design_layers(self._probe, both_types=False)
        return self._by_types[types]

    def per_layer(self, cfg: Mapping[str, int] | None) -> list[dict[str, Any]]:
        """Each layer's name, channels and table time(s) under ``cfg``."""
        out = []
        for ly in self.active_layers(cfg):
            cin, cout = ly.channels(cfg)
            rec: dict[str, Any] = {"name": ly.name, "site": ly.site.key(), "cin": cin, "cout": cout,
                                   "ms": self.table.layer_ms(ly.site, cin, cout)}
            if self.table.runtime == "ort-int8":
                rec["fp32_ms"] = self.table.layer_ms(ly.site, cin, cout, fp32=True)
            out.append(rec)
        return out

    def layer_sum(self, cfg: Mapping[str, int] | None) -> float:
        total = 0.0
        for rec in self.per_layer(cfg):
            ms = rec["ms"]
            if self.int8_where_faster and "fp32_ms" in rec:
                ms = min(ms, rec["fp32_ms"])
            total += ms
        return total

    def melems(self, cfg: Mapping[str, int] | None) -> float:
        """Million activation elements the layers write (what element-wise work scales with)."""
        return sum(ly.channels(cfg)[1] * ly.out_pixels for ly in self.active_layers(cfg)) / 1e6

    def __call__(self, cfg: Mapping[str, int] | None) -> float:
        t = self.table
        return t.overhead_ms + t.scale * self.layer_sum(cfg) + t.ms_per_melem * self.melems(cfg)

    def fp32_layers(self, cfg: Mapping[str, int] | None, margin: float = 1.0) -> list[str]:
        """Names of the convs whose int8 time is above ``margin`` x their fp32 time (ort-int8). A tie
        stays int8: both times read 0 where a noisy grid extrapolates below zero, which says nothing."""
        if self.table.runtime != "ort-int8":
            return []
        return [r["name"] for r in self.per_layer(cfg)
                if r["site"].startswith(("conv", "dwconv")) and r["ms"] > margin * r["fp32_ms"]]


# ----------------------------------------------------------------------------- whole sub-networks
def _family(family: Any) -> Any:
    from slimface.families import Family, get_family

    return family if isinstance(family, Family) else get_family(str(family))


def _build(family: Any, model: Mapping[str, Any], cfg: Mapping[str, int] | None) -> nn.Module:
    """Sub-network ``cfg`` of the student design ``model`` describes (``separable``: its conv types,
    all separable when absent; ``"search"``: the types of ``cfg``'s ``conv:`` keys, and with no
    ``cfg`` the supernet of choice convs itself)."""
    from slimface.models.blocks import SEARCH, convertible_convs, make_conv_choices, set_conv_types
    from slimface.nn.super_layers import separable_names, width_part

    fam = _family(family)
    separable = model.get("separable", True)
    net = fam.build_generator(resolution=model["resolution"], channels=model["channels"],
                              width_mult=model["width_mult"], separable=separable is not False, sub=width_part(cfg))
    if separable == SEARCH and cfg is None:
        net.separable = make_conv_choices(net)
    else:
        if separable == SEARCH:
            separable = separable_names(cfg, convertible_convs(net))
        if not isinstance(separable, bool):
            net.separable = set_conv_types(net, separable)
    net.cap_kernels(model.get("max_kernel"))
    net.channel_multiple = model.get("channel_multiple")
    return net.eval()


def _design(net: Any) -> dict[str, Any]:
    """The conv types, kernel cap and width step of a student generator for a table's ``model`` (each
    left out at its default -- all separable, no cap, the family's step -- so tables made before them
    stay valid)."""
    separable = getattr(net, "separable", True)
    out: dict[str, Any] = {} if separable is True else {"separable": separable}
    for key in ("max_kernel", "channel_multiple"):
        if getattr(net, key, None) is not None:
            out[key] = getattr(net, key)
    return out


def onnx_node_module(node_name: str) -> str:
    """ONNX node name from slimface's TorchScript exporter (``/res/res.0/conv1/depthwise/Conv``) ->
    the module name it came from (``res.0.conv1.depthwise``)."""
    parts = [p for p in node_name.strip("/").split("/")[:-1] if p]
    name = ""
    for p in parts:
        last = name.rsplit(".", 1)[-1] if name else ""
        if name and p.startswith(last + "."):  # a Sequential child's scope repeats its parent's name
            name = name + p[len(last):]
        else:
            name = f"{name}.{p}" if name else p
    return name


def conv_nodes_by_module(onnx_path: str | Path, net: nn.Module) -> dict[str, str]:
    """Module name -> ONNX node name for the convs of ``net``'s export at ``onnx_path``.

    The TorchScript exporter writes nodes in execution order, the order the probe forward of
    :func:`design_layers` sees the convs in, so they are paired in order; each pair must agree on
    the op and the weight shape, else that node is left out (kept as the quantizer decides)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}

    def weight_shape(node: Any) -> tuple[int, ...] | None:
        name = node.input[1]
        for _ in range(4):  # weights shared through Identity / Constant nodes
            if name in shapes:
                return shapes[name]
            prod = producers.get(name)
            if prod is None:
                return None
            if prod.op_type == "Constant":
                return tuple(numpy_helper.to_array(prod.attribute[0].t).shape)
            name = prod.input[0] if prod.input else ""
        return None

    nodes = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    layers = [ly for ly in design_layers(net) if ly.site.op != "linear"]
    modules = dict(net.named_modules())
    out: dict[str, str] = {}
    if len(nodes) != len(layers):
        return out
    for ly, node in zip(layers, nodes):
        if (node.op_type == "ConvTranspose") != (ly.site.op == "deconv"):
            return {}  # out of step: trust none of the pairs
        w = getattr(modules.get(ly.name), "weight", None)
        if w is not None and weight_shape(node) in (None, tuple(w.shape)):
            out[ly.name] = node.name
    return out


def module_matches(module: str, patterns: Sequence[str]) -> bool:
    """Whether ``module`` (or a node in its scope) is named by one of the fnmatch ``patterns``; a
    pattern ending in ``.*`` names the module itself too (``decoder.s128.*`` covers the stage's own
    Concat, whose scope is ``decoder.s128``)."""
    return any(fnmatch.fnmatchcase(module, p) or fnmatch.fnmatchcase(module + ".", p) for p in patterns)


def fp32_nodes(onnx_path: str | Path, net: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The ONNX nodes of ``net``'s export at ``onnx_path`` that int8 keeps fp32 for ``patterns``
    (fnmatch over module names; an exact name is a pattern too): each named conv, paired with its node
    by :func:`conv_nodes_by_module`, and every node whose scope (:func:`onnx_node_module`) is named, so
    ``decoder.s128.*`` keeps that stage's element-wise ops fp32 as well as its convs."""
    import onnx

    if not patterns:
        return []
    out = [node for m, node in conv_nodes_by_module(onnx_path, net).items() if module_matches(m, patterns)]
    seen = set(out)
    for node in onnx.load(str(onnx_path)).graph.node:
        if node.name not in seen and module_matches(onnx_node_module(node.name), patterns):
            out.append(node.name)
            seen.add(node.name)
    return out


@contextlib.contextmanager
def subnet_runner(family: Any, model: Mapping[str, Any], cfg: Mapping[str, int] | None, runtime: str,
                  threads: int = 1, fp32_modules: Sequence[str] = (),
                  ) -> Iterator[tuple[Callable[[], Any], dict[str, Any]]]:
    """``(run, info)``: one batch-1 forward of sub-network ``cfg`` (random weights) as deployed in
    ``runtime`` (:func:`net_runner`)."""
    with net_runner(_build(family, model, cfg), runtime, threads, fp32_modules) as pair:
        yield pair


@contextlib.contextmanager
def net_runner(net: nn.Module, runtime: str, threads: int = 1, fp32_modules: Sequence[str] = (),
               ) -> Iterator[tuple[Callable[[], Any], dict[str, Any]]]:
    """``(run, info)``: one batch-1 forward of generator ``net`` as deployed in ``runtime`` (PyTorch:
    batch norms folded; ort-int8: quantized like the export, with ``fp32_modules`` kept fp32).
    PyTorch's thread count is ``threads`` inside the block."""
    from slimface.nn.fold import inference_copy

    check_runtime(runtime)
    net = net.eval()
    inputs = net.example_inputs(1)  # type: ignore[operator]
    if runtime == "torch":
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            m, _ = inference_copy(net, inputs)
            with torch.inference_mode():
                yield (lambda: m(*inputs)), {}
        finally:
            torch.set_num_threads(old)
        return
    from slimface.deploy.calibration import random_calibration
    from slimface.deploy.onnx_export import export_onnx
    from slimface.deploy.quantize import quantize_int8, session_kwargs

    with tempfile.TemporaryDirectory(prefix="slimface-latency-") as tmp:
        path = export_onnx(net, inputs, Path(tmp) / "net.onnx")
        kw: dict[str, Any] = {}
        info: dict[str, Any] = {}
        if runtime == "ort-int8":
            nodes = fp32_nodes(path, net, fp32_modules)
            rep = quantize_int8(path, Path(tmp) / "net.int8.onnx", random_calibration(inputs, 4),
                                nodes_to_exclude=nodes, guard=False)
            path = rep.path
            kw = session_kwargs({"slimface.int8_fp32_nodes": "x"} if nodes else {})
            info = {"int8_ops": rep.int8_ops, "fp32_ops": rep.fp32_ops, "fp32_nodes": len(nodes)}
        sess = _ort_session(str(path), threads, **kw)
        names = [i.name for i in sess.get_inputs()]
        feeds = {n: t.numpy() for n, t in zip(("image", "landmarks"), inputs) if n in names}
        yield (lambda: sess.run(None, feeds)), info
        del sess


def measure_subnet(family: Any, model: Mapping[str, Any], cfg: Mapping[str, int] | None, runtime: str,
                   threads: int = 1, runs: int = 50, warmup: int = 5,
                   fp32_modules: Sequence[str] = ()) -> dict[str, Any]:
    """Measured latency (ms, batch 1; :func:`_robust_ms`) of sub-network ``cfg`` in ``runtime``."""
    with subnet_runner(family, model, cfg, runtime, threads, fp32_modules) as (run, info):
        return {"ms": _robust_ms(run, warmup, runs), **info}


def _alternated(ref_run: Callable[[], Any], run: Callable[[], Any], runs: int, blocks: int,
                ref_blocks: list[float]) -> float:
    """Median over ``blocks`` of (``run``'s block median / ``ref_run``'s), the two alternated block by
    block; appends ``ref_run``'s block medians to ``ref_blocks``."""
    per: list[float] = []
    for b in range(blocks):
        r = _median_ms(ref_run, warmup=2 if b == 0 else 1, min_runs=runs, max_runs=runs, budget_s=0)
        c = _median_ms(run, warmup=2 if b == 0 else 1, min_runs=runs, max_runs=runs, budget_s=0)
        ref_blocks.append(r)
        per.append(c / r)
    return statistics.median(per)


def measure_relative(family: Any, model: Mapping[str, Any], cfgs: Sequence[Mapping[str, int] | None],
                     reference: Mapping[str, int] | None, runtime: str, threads: int = 1, runs: int = 10,
                     blocks: int = 5, fp32_modules: Callable[[Mapping[str, int] | None], Sequence[str]] | None = None,
                     teacher: bool = False) -> tuple[list[float], float]:
    """Latency of each of ``cfgs`` relative to ``reference``, each pair alternated in ``blocks``
    blocks of ``runs`` calls (the median of the per-block ratios), and the reference's own latency
    (ms; the lowest block median). On a shared machine, load slows both sides of a pair alike, so
    the ratios hold where absolute times swing by half. ``teacher``: one more ratio at the end, the
    family's teacher at the model's size (normal convs, full width) against the same reference."""
    ratios: list[float] = []
    ref_blocks: list[float] = []
    keep = fp32_modules or (lambda c: ())
    with subnet_runner(family, model, reference, runtime, threads, keep(reference)) as (ref_run, _):
        for cfg in cfgs:
            with subnet_runner(family, model, cfg, runtime, threads, keep(cfg)) as (run, _):
                ratios.append(_alternated(ref_run, run, runs, blocks, ref_blocks))
        if teacher:
            net = _family(family).build_generator(resolution=model["resolution"], channels=model["channels"],
                                                  width_mult=model["width_mult"], separable=False)
            with net_runner(net, runtime, threads) as (run, _):
                ratios.append(_alternated(ref_run, run, max(2, runs // 4), blocks, ref_blocks))
    return ratios, min(ref_blocks) if ref_blocks else float("nan")


def _fit(points: Sequence[tuple[float, float, float]]) -> tuple[float, float, float]:
    """``(overhead_ms, scale, ms_per_melem)`` of ``measured = overhead + scale * layer_sum +
    ms_per_melem * activation Melements`` by least squares over ``(layer_sum, melems, measured)``
    points. Of the models whose coefficients are all >= 0 (the three terms, or the overhead with one
    of the other two), the one with the lowest leave-one-out error: the layer sum and the activation
    volume grow together, so a fit may trade one against the other (a negative coefficient) or buy a
    close fit with a negative overhead, and neither extrapolates to the smallest sub-networks. With
    fewer than 3 points (or no such model) only the overhead is fitted (scale 1)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return 0.0, 1.0, 0.0
    sums, elems, meas = pts[:, 0], pts[:, 1], pts[:, 2]
    feats_all = np.c_[np.ones_like(sums), sums, elems]

    def solve(rows: np.ndarray, cols: tuple[int, ...]) -> np.ndarray | None:
        feats = feats_all[rows][:, cols]
        if np.linalg.matrix_rank(feats) < len(cols):
            return None
        coef, *_ = np.linalg.lstsq(feats, meas[rows], rcond=None)
        return coef if (coef >= 0).all() else None

    best: tuple[float, dict[int, float]] | None = None
    everything = np.arange(len(pts))
    for cols in ((0, 1, 2), (0, 1), (0, 2)):
        if len(pts) < len(cols) + 1 or (coef := solve(everything, cols)) is None:
            continue
        errors = []
        for i in everything:  # leave-one-out: fit without point i, predict it
            c = solve(everything[everything != i], cols)
            pred = float(feats_all[i, list(cols)] @ c) if c is not None else float("inf")
            errors.append(abs(pred / meas[i] - 1) if meas[i] > 0 else float("inf"))
        score = float(np.median(errors))
        if best is None or score < best[0]:
            best = (score, dict(zip(cols, map(float, coef))))
    if best is not None:
        full = best[1]
        return full[0], full.get(1, 0.0), full.get(2, 0.0)
    return float(np.median(meas - sums)), 1.0, 0.0


def machine_info() -> dict[str, Any]:
    from slimface.deploy.int8_guard import _feature_text, cpu_arch, cpu_features, cpu_name

    import os

    return {"cpu": cpu_name(), "arch": cpu_arch(), "cpu_features": _feature_text(cpu_features(), cpu_arch()),
            "logical_cpus": os.cpu_count(), "platform": platform.platform()}


def library_versions() -> dict[str, str]:
    import slimface

    out = {"python": platform.python_version(), "torch": torch.__version__, "slimface": slimface.__version__}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def spread_sample(space: Any, gen: torch.Generator) -> dict[str, int]:
    """A random config whose size is spread over the whole space: one draw ``u`` in [0, 1] sets every
    group's choice near the same quantile (plus or minus one choice). Uniform per-group draws all
    land near the middle of the space, which tells little about a latency model."""
    u = float(torch.rand((), generator=gen))
    cfg = {}
    for g in space.groups:
        opts = space.choices[g]
        i = int(round(u * (len(opts) - 1))) + int(torch.randint(-1, 2, (1,), generator=gen))
        cfg[g] = opts[min(max(i, 0), len(opts) - 1)]
    return cfg


def fit_configs(space: Any, n: int, seed: int = 0) -> list[dict[str, int]]:
    """``n`` configs to fit the overhead on: the smallest, the largest, then :func:`spread_sample` ones."""
    gen = torch.Generator().manual_seed(seed)
    out = [space.smallest(), space.largest()][: max(0, n)]
    while len(out) < n:
        out.append(spread_sample(space, gen))
    return out


def build_table(family: Any, resolution: int, channels: int = 3, width_mult: float = 1.0,
                runtime: str = "torch", threads: int = 1, max_grid: int = 4, fit_subnets: int = 6,
                seed: int = 0, progress: Callable[[str], None] | None = None,
                separable: bool | str | Sequence[str] = True, max_kernel: int | None = None,
                teacher: bool = True, channel_multiple: int | None = None) -> LatencyTable:
    """Time every site of ``family``'s student design space (conv types ``separable``, kernel cap
    ``max_kernel``, width step ``channel_multiple``) at this size in ``runtime`` (see the module
    docstring), fit the per-network overhead on ``fit_subnets`` whole sub-networks and, with
    ``teacher``, time the family's teacher at this size too (``teacher_ms``: what a relative latency
    budget such as "10x" divides)."""
    from slimface.compress.space import ConfigSpace
    from slimface.nn.super_layers import conv_choices

    check_runtime(runtime)
    if threads < 1:
        raise ConfigError(f"--threads {threads}: must be >= 1")
    if max_grid < 2:
        raise ConfigError(f"max_grid {max_grid}: must be >= 2")
    t_start = time.perf_counter()
    fam = _family(family)
    model = {"family": fam.name, "resolution": int(resolution), "channels": int(channels),
             "width_mult": float(width_mult)}
    if separable is not True:  # a conv-type mix (student.separable); all separable is the default design
        model["separable"] = separable if isinstance(separable, (bool, str)) else sorted(separable)
    if max_kernel is not None:
        model["max_kernel"] = int(max_kernel)
    if channel_multiple is not None:
        model["channel_multiple"] = int(channel_multiple)
    supernet = _build(fam, model, None)
    space = ConfigSpace.from_supernet(fam, supernet)
    layers = design_layers(supernet)
    needed = _needed(layers, space.choices)
    if runtime == "torch" and conv_choices(supernet):
        needed = _both_layouts(needed)
    if runtime != "torch":  # ONNX Runtime does not see PyTorch's memory layout: merge those sites
        merged: dict[str, tuple[Site, set[tuple[int, int]]]] = {}
        for site, pairs in needed.values():
            s = Site(**{**asdict(site), "channels_last": False})
            merged.setdefault(s.key(), (s, set()))[1].update(pairs)
        needed = merged
    call_overhead = _ort_call_overhead(threads) if runtime != "torch" else 0.0
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    sites: dict[str, SiteTable] = {}
    try:
        for i, (key, (site, pairs)) in enumerate(sorted(needed.items())):
            if site.op == "dwconv":
                cins, couts = _subsample([c for c, _ in pairs], max_grid + 2), []
                grid = [(c, c) for c in cins]
            else:
                cins = _subsample([c for c, _ in pairs], max_grid)
                couts = _subsample([c for _, c in pairs], max_grid)
                grid = [(a, b) for a in cins for b in couts]
            timed = {p: _time_point(runtime, site, p[0], p[1], threads, call_overhead) for p in grid}
            width = max(1, len(couts))

            def mat(k: str) -> list[list[float]]:
                if not couts:
                    return [[timed[(c, c)][k]] for c in cins]
                return [[timed[(a, b)][k] for b in couts] for a in cins]

            sites[key] = SiteTable(site, cins, couts, mat("ms"), mat("fp32_ms") if runtime == "ort-int8" else None)
            if progress:
                progress(f"  site {i + 1}/{len(needed)} {key}: {len(cins)}x{width} points")
    finally:
        torch.set_num_threads(old_threads)
    table = LatencyTable(runtime, threads, model, sites, machine_info(), library_versions(),
                         call_overhead_ms=call_overhead,
                         created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    lm = LatencyModel(table, supernet, layers=layers)
    points = []
    cfgs = fit_configs(space, fit_subnets, seed)
    # each fit sub-network alternated with the smallest one, so load on the machine cancels out
    if progress and teacher:
        progress(f"  timing {len(cfgs)} whole sub-networks and the teacher, each alternated with the smallest")
    ratios, ref_ms = (measure_relative(fam, model, cfgs, space.smallest(), runtime, threads, teacher=teacher)
                      if cfgs or teacher else ([], 0.0))
    if teacher:
        table.teacher_ms = ratios.pop() * ref_ms
        if progress:
            progress(f"  teacher: {table.teacher_ms:.2f} ms")
    for cfg, ratio in zip(cfgs, ratios):
        measured = ratio * ref_ms
        s, el = lm.layer_sum(cfg), lm.melems(cfg)
        points.append((s, el, measured))
        table.fit.append({"config": space.encode(cfg), "layer_sum_ms": s, "melems": el, "measured_ms": measured})
        if progress:
            progress(f"  fit sub-network {len(points)}/{fit_subnets}: layers {s:.2f} ms, measured {measured:.2f} ms")
    table.overhead_ms, table.scale, table.ms_per_melem = _fit(points)
    table.build_seconds = time.perf_counter() - t_start
    return table


class MappedLatencyModel:
    """Prices configs of one supernet with the :class:`LatencyModel` of the same design at another size
    (the size a student is deployed at, e.g. 128x128 at full width, while the search runs on a small
    preset): each config goes through a :class:`~slimface.compress.extract.SizeMap` first."""

    def __init__(self, model: LatencyModel, size_map: Callable[[Mapping[str, int]], dict[str, int]]) -> None:
        self.model, self.size_map = model, size_map
        self.table = model.table

    def __call__(self, cfg: Mapping[str, int] | None) -> float:
        return self.model(self.size_map(cfg or {}))

    def fp32_layers(self, cfg: Mapping[str, int] | None, margin: float = 1.0) -> list[str]:
        """:meth:`LatencyModel.fp32_layers` at the mapped size: the int8 choice is made where the student
        is deployed (module names are the same at every size of one design)."""
        return self.model.fp32_layers(self.size_map(cfg or {}), margin)


def search_latency_model(family: Any, supernet: nn.Module, runtime: str, threads: int = 1,
                         table_path: str | Path | None = None, cache_dir: str | Path | None = None,
                         progress: Callable[[str], None] | None = None, size: tuple[int, float] | None = None,
                         need_teacher: bool = False, int8_where_faster: bool = False,
                         ) -> LatencyModel | MappedLatencyModel:
    """The latency model a search prices ``supernet``'s candidates with: ``table_path`` if given, else
    a table built on this machine and kept in ``cache_dir`` (rebuilt when it was made for another
    model, runtime, thread count or CPU, or lacks the teacher's time that ``need_teacher`` asks for).
    ``size`` (resolution, width multiplier): price each candidate as the same design at that size
    (its widths keep their fractions), not at the supernet's own. Under ``torch.distributed`` only
    rank 0 times layers; every rank then reads the same table, so all price candidates alike.
    ``int8_where_faster`` (ort-int8): each conv priced at the faster of int8 and fp32, as deployed with
    ``deploy.int8_nodes: faster``."""
    from slimface.compress.extract import SizeMap
    from slimface.compress.space import ConfigSpace
    from slimface.train import distributed as D

    check_runtime(runtime)
    supernet = D.unwrap(supernet)
    fam = _family(family)
    net: Any = supernet
    model = {"family": fam.name, "resolution": int(net.resolution), "channels": int(net.channels),
             "width_mult": float(net.width_mult), **_design(net)}
    own_size = size is None or (int(size[0]), float(size[1])) == (model["resolution"], model["width_mult"])
    target: nn.Module = supernet
    if not own_size:
        assert size is not None
        model.update(resolution=int(size[0]), width_mult=float(size[1]))
        target = _build(fam, model, None)

    def priced(table: LatencyTable) -> LatencyModel | MappedLatencyModel:
        lm = LatencyModel(table, target, int8_where_faster=int8_where_faster)
        return lm if own_size else MappedLatencyModel(lm, SizeMap(supernet, target, ConfigSpace.from_supernet(fam, target)))

    if table_path is not None:
        table = LatencyTable.load(table_path)
        if table.runtime != runtime:
            raise ConfigError(f"latency table {table_path} is for runtime {table.runtime}, not {runtime}; "
                              "give a table of that runtime or drop search.latency_table")
        if need_teacher and table.teacher_ms is None:
            raise ConfigError(f"latency table {table_path} has no teacher time for a relative budget; "
                              "rebuild it with slimface latency-table or give search.latency in ms")
        return priced(table)
    if cache_dir is None:
        raise ValueError("search_latency_model needs a table_path or a cache_dir")
    tag = "" if own_size else f"_{model['resolution']}x{model['width_mult']:g}"
    path = Path(cache_dir) / f"latency_{runtime}_t{threads}{tag}.json"
    if D.is_main():
        fresh = False
        if path.is_file():
            try:
                old = LatencyTable.load(path)
                fresh = (old.model == model and old.runtime == runtime and old.threads == threads
                         and old.machine.get("cpu") == machine_info()["cpu"]
                         and not (need_teacher and old.teacher_ms is None))
            except CheckpointError:
                fresh = False
        if not fresh:
            if progress:
                progress(f"  timing the {runtime} latency of every layer shape ({threads} thread(s)) at "
                         f"{model['resolution']}² ×{model['width_mult']:g} for the search")
            build_table(fam, model["resolution"], model["channels"], model["width_mult"], runtime, threads,
                        progress=progress, separable=model.get("separable", True),
                        max_kernel=model.get("max_kernel"), channel_multiple=model.get("channel_multiple")).save(path)
    D.barrier()
    return priced(LatencyTable.load(path))


def slow_int8_modules(family: Any, supernet: nn.Module, cfg: Mapping[str, int] | None, threads: int = 1,
                      table_path: str | Path | None = None, cache_dir: str | Path | None = None,
                      progress: Callable[[str], None] | None = None,
                      size: tuple[int, float] | None = None) -> list[str]:
    """The convs (``supernet`` module names) of sub-network ``cfg`` whose int8 time in the ort-int8
    latency table is above their fp32 time, at ``size`` (the deployment size the search priced,
    default the supernet's own): what ``quantize_int8(nodes_to_exclude=...)`` should keep fp32 so that
    int8 pays (depthwise convs, typically). Map them to a student export's nodes with
    :func:`fp32_nodes`; the same names hold for the design at any size."""
    model = search_latency_model(family, supernet, "ort-int8", threads, table_path, cache_dir, progress,
                                 size=size, int8_where_faster=True)
    return model.fp32_layers(cfg)
