"""Latency estimate of an ONNX model on a device that is not present: a cost model over the graph.

Graph costs (device-free). The graph inputs are made static (batch 1, every other symbolic dim =
seq_len), shapes are inferred, and each node gets FLOPs, bytes moved and a class:
- `int8_matmul`: MatMul/Gemm/Conv whose data input and weight both come from DequantizeLinear of
  int8/uint8 (onnxruntime fuses DQ -> MatMul into integer kernels; Gemm/Conv only with a quantized
  output), and the integer ops themselves;
- `fp32_matmul`: other MatMul/Gemm/Conv;
- `other`: everything else (element-wise, normalisation, softmax, data movement, shape ops).
FLOPs: matmul 2*M*N*K (batched: 2 * output elements * K), conv 2 * output elements * Cin/group *
kernel area; element-wise and normalisation ops: output elements x a small per-op constant.
Bytes: inputs + outputs (weights included) at their dtype size; a fused weight/activation DQ counts
at its int8/uint8 size; Gather reads only the rows it gathers; reshapes and shape ops are views.
What onnxruntime removes before running is not counted: Identity/Dropout, Constant, nodes whose
inputs are all constant (constant folding), and DequantizeLinear nodes fused into integer kernels.

Time model (per node, summed), class c, t threads, T = cores the peak figures cover:

    t_node = flops / (peak_c * eff_c * t**alpha_c / T) + bytes / (bandwidth * eff_mem)
             + overhead_ms * (1 + overhead_thread * (t - 1))

peak_c is the device's INT8 peak for int8 matmuls and its FP32 peak for the rest. The efficiencies,
thread exponents and per-node overheads are fitted on the host (`calibrate`, from measured
latencies) and stored in profiles/calibration/host-cpu.json; estimating another device reuses them
with that device's peak figures, bandwidth and threads. Every result says `estimated: True`.

Host peak figures (`host_peaks`): peak_fp32 = cores * GHz * fp32 FLOPs/cycle/core, where GHz is
/proc/cpuinfo "cpu MHz" (assumed 2.5 GHz if absent) and FLOPs/cycle is 64 with AVX-512, 32 with
AVX2+FMA (two 256-bit FMA pipes), 16 with NEON, else 8; peak_int8 = peak_fp32 * 4 with VNNI/AMX
(VPDPBUSD: four 8-bit MACs per 32-bit lane), * 2 without (VPMADDUBSW + VPMADDWD take two steps).
Host bandwidth: a measured numpy streaming copy (read + write bytes / best time).
"""
from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import EdgekdError, ModelError, ProfileError
from .profiles import DeviceProfile, detect_host

CLASSES = ("int8_matmul", "fp32_matmul", "other")
MATMULS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "FusedMatMul"}
INT_MATMULS = {"MatMulInteger", "QLinearMatMul", "ConvInteger", "QLinearConv", "MatMulIntegerToFloat"}
REMOVED = {"Identity", "Dropout", "Constant"}  # eliminated by onnxruntime's graph optimiser
VIEWS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Shape", "Size"}  # no data moved
MOVES = {"Transpose", "Concat", "Slice", "Split", "Expand", "Tile", "Pad", "ConstantOfShape", "Range"}
# FLOPs per output element (per input element for reductions); unlisted element-wise ops: 1.
FLOPS_PER_ELEMENT = {"Erf": 8, "Tanh": 8, "Exp": 4, "Log": 4, "Sigmoid": 4, "Gelu": 10, "FastGelu": 8,
                     "Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8, "SkipLayerNormalization": 9,
                     "BatchNormalization": 2, "InstanceNormalization": 8, "QuantizeLinear": 3,
                     "DequantizeLinear": 2, "Sqrt": 2, "Pow": 2, "Div": 2}
REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "GlobalAveragePool", "GlobalMaxPool"}
DEFAULT_CALIBRATION = Path(__file__).resolve().parents[2] / "profiles" / "calibration" / "host-cpu.json"
DEFAULT_MHZ = 2500.0
FORMULA = ("ms = sum over nodes of flops / (peak_class * eff_class * min(t, T)**alpha_class / T) "
           "+ bytes / (bandwidth * eff_mem) + overhead_ms * (1 + overhead_thread * (t - 1)); "
           "t threads, T cores the peak covers, peak_class = INT8 peak for int8 matmuls, FP32 peak otherwise")


@dataclass(frozen=True)
class NodeCost:
    name: str
    op_type: str
    cls: str
    flops: float
    bytes: float


# ------------------------------------------------------------------ graph costs
def _static_inputs(model: onnx.ModelProto, seq_len: int | None) -> None:
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        for k, d in enumerate(inp.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                if k > 0 and seq_len is None:
                    raise ModelError(f"input {inp.name!r} has a symbolic dim {d.dim_param!r}: give a seq_len")
                d.dim_value = 1 if k == 0 else int(seq_len)


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes of every tensor. onnx's own inference cannot follow Shape -> Concat -> Reshape chains
    (what dynamic-axis exports are made of), onnxruntime's symbolic inference can: try it first."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except (ImportError, RuntimeError, AssertionError, KeyError, ValueError, TypeError):
        return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _tensor_info(model: onnx.ModelProto) -> dict[str, tuple[int, tuple | None]]:
    """name -> (elem_type, shape or None if unknown)."""
    info: dict[str, tuple[int, tuple | None]] = {}
    for v in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        t = v.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim) if t.HasField("shape") else None
        info[v.name] = (t.elem_type, None if shape is None or -1 in shape else shape)
    for i in model.graph.initializer:
        info[i.name] = (i.data_type, tuple(i.dims))
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            t = n.attribute[0].t
            info[n.output[0]] = (t.data_type, tuple(t.dims))
    return info


def _size(dtype: int) -> int:
    return onnx.helper.tensor_dtype_to_np_dtype(dtype).itemsize if dtype else 4


def _numel(shape: tuple | None) -> int:
    return int(np.prod(shape)) if shape is not None else 0


def _node_costs(model: onnx.ModelProto) -> list[NodeCost]:
    g = model.graph
    info = _tensor_info(model)
    producer = {o: n for n in g.node for o in n.output}
    constant = {i.name for i in g.initializer} | {""}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def quantized_source(name: str) -> int | None:
        """The int8/uint8 dtype behind a DequantizeLinear output, else None."""
        p = producer.get(name)
        if p is not None and p.op_type == "DequantizeLinear":
            dtype = info.get(p.input[0], (0, None))[0]
            if dtype in (TensorProto.INT8, TensorProto.UINT8):
                return dtype
        return None

    def is_int8_matmul(n: onnx.NodeProto) -> bool:
        # onnxruntime's QDQ fusions: DQ -> MatMul -> (float) becomes MatMulIntegerToFloat; Gemm and Conv
        # become QGemm / QLinearConv only when their output is quantized again (DQ -> Gemm -> float was
        # measured to stay a float Gemm with its DQs executed, onnxruntime 1.32).
        if n.op_type in INT_MATMULS:
            return True
        if n.op_type not in ("MatMul", "Gemm", "Conv") or len(n.input) < 2:
            return False
        if any(quantized_source(i) is None for i in n.input[:2]):
            return False
        users = consumers.get(n.output[0], [])
        return n.op_type == "MatMul" or (bool(users) and all(u.op_type == "QuantizeLinear" for u in users))

    # Constant folding: onnxruntime folds every node whose inputs are all constant, except
    # DequantizeLinear (kept so that QDQ patterns can be fused; unfused, it runs every inference).
    folded = set()
    for n in g.node:
        if n.op_type == "Constant" or (n.op_type != "DequantizeLinear" and all(i in constant for i in n.input)):
            constant.update(n.output)
            folded.add(id(n))
    fused = _fused_away(g, constant, producer, consumers)
    costs = []
    for n in g.node:
        if n.op_type in REMOVED or id(n) in folded or id(n) in fused:
            continue
        if n.op_type == "DequantizeLinear" and all(is_int8_matmul(c) for c in consumers.get(n.output[0], [None]) if c):
            continue  # fused into the integer kernel
        in_shapes = [info.get(i, (0, None)) for i in n.input if i]
        out = info.get(n.output[0], (0, None))
        out_el = _numel(out[1])
        cls = "other"
        if is_int8_matmul(n):
            cls = "int8_matmul"
        elif n.op_type in MATMULS:
            cls = "fp32_matmul"
        # bytes: a DQ output fused into an integer kernel is read at its 8-bit size
        in_bytes = 0.0
        for i in n.input:
            if not i:
                continue
            dtype, shape = info.get(i, (0, None))
            q = quantized_source(i) if cls == "int8_matmul" else None
            in_bytes += _numel(shape) * _size(q or dtype)
        out_bytes = sum(_numel(info.get(o, (0, None))[1]) * _size(info.get(o, (0, None))[0]) for o in n.output if o)
        if n.op_type in VIEWS:
            nbytes = 0.0
        elif n.op_type in ("Gather", "GatherElements", "GatherND"):
            idx = info.get(n.input[1], (0, None))
            nbytes = 2.0 * out_bytes + _numel(idx[1]) * _size(idx[0])  # only the gathered rows are read
        elif n.op_type in MOVES:
            nbytes = 2.0 * out_bytes
        else:
            nbytes = in_bytes + out_bytes
        costs.append(NodeCost(n.name or n.output[0], n.op_type, cls, _flops(n, in_shapes, out[1], out_el), nbytes))
    return costs


def _fused_away(g: onnx.GraphProto, constant: set[str], producer: dict, consumers: dict) -> set[int]:
    """Nodes onnxruntime's default (ORT_ENABLE_ALL) CPU optimiser merges into a neighbour, so that
    they cost no launch and no pass over memory: duplicates (common-subexpression elimination);
    the Erf GELU chain Div -> Erf -> Add -> Mul -> Mul (and its bias Add) into one (Bias)Gelu node,
    costed at the Erf; a scalar Mul/Div after a MatMul (MatMulScaleFusion into FusedMatMul)."""
    gone: set[int] = set()
    seen: dict[tuple, onnx.NodeProto] = {}
    for n in g.node:  # CSE, in topological order
        key = (n.op_type, tuple(n.input), tuple(a.SerializeToString() for a in n.attribute))
        if n.op_type not in REMOVED and n.input and key in seen:
            gone.add(id(n))
        else:
            seen[key] = n

    def only_user(name: str, op: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    for e in g.node:
        if e.op_type != "Erf":
            continue
        div = producer.get(e.input[0])
        add = only_user(e.output[0], "Add")
        mul1 = add and only_user(add.output[0], "Mul")
        mul2 = mul1 and only_user(mul1.output[0], "Mul")
        if not (div is not None and div.op_type in ("Div", "Mul") and div.input[1] in constant and mul1):
            continue
        gone.update(id(x) for x in (div, add, mul1) + ((mul2,) if mul2 and mul2.input[1] in constant else ()))
        bias = producer.get(div.input[0])
        if bias is not None and bias.op_type == "Add" and any(i in constant for i in bias.input):
            gone.add(id(bias))
    for n in g.node:
        if n.op_type in ("Mul", "Div") and n.input[1] in constant:
            src = producer.get(n.input[0])
            if src is not None and src.op_type == "MatMul" and len(consumers.get(src.output[0], [])) == 1:
                gone.add(id(n))
    return gone


def _flops(n: onnx.NodeProto, ins: list[tuple], out_shape: tuple | None, out_el: int) -> float:
    op = n.op_type
    if op in VIEWS or op in MOVES or op.startswith("Gather"):
        return 0.0
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat", "FusedMatMul"):
        a = ins[0][1]
        k = a[-1] if a else 0
        return 2.0 * out_el * k
    if op == "Gemm":
        a = ins[0][1]
        trans_a = next((x.i for x in n.attribute if x.name == "transA"), 0)
        k = (a[0] if trans_a else a[-1]) if a else 0
        return 2.0 * out_el * k
    if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
        w = ins[3 if op == "QLinearConv" else 1][1]
        if w is None:
            return 0.0
        per_out = int(np.prod(w[1:]))  # Cin/group * kernel area
        if op == "ConvTranspose":  # each input element scatters into Cout/group * kernel outputs
            return 2.0 * _numel(ins[0][1]) * int(np.prod(w[1:]))
        return 2.0 * out_el * per_out
    if op in REDUCTIONS:
        return float(_numel(ins[0][1]))
    if op in ("MaxPool", "AveragePool"):
        kernel = next((list(x.ints) for x in n.attribute if x.name == "kernel_shape"), [1])
        return float(out_el * int(np.prod(kernel)))
    return float(out_el * FLOPS_PER_ELEMENT.get(op, 1))


@functools.lru_cache(maxsize=64)
def _cached_costs(path: str, mtime_ns: int, seq_len: int | None) -> tuple[NodeCost, ...]:
    model = onnx.load(path, load_external_data=False)
    _static_inputs(model, seq_len)
    return tuple(_node_costs(_infer(model)))


def graph_costs(onnx_path: str | Path | onnx.ModelProto, seq_len: int | None) -> list[NodeCost]:
    """Per-node FLOPs, bytes and class at batch 1 and the given sequence length."""
    if isinstance(onnx_path, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(onnx_path)
        _static_inputs(model, seq_len)
        return _node_costs(_infer(model))
    path = Path(onnx_path)
    if not path.is_file():
        raise ModelError(f"ONNX file {str(path)!r} does not exist; export the model first.")
    return list(_cached_costs(str(path.resolve()), path.stat().st_mtime_ns, seq_len))


def summarize(costs: list[NodeCost]) -> dict:
    """FLOPs, bytes and node counts per class (what the time model needs)."""
    s = {c: {"flops": 0.0, "bytes": 0.0, "nodes": 0} for c in CLASSES}
    for c in costs:
        s[c.cls]["flops"] += c.flops
        s[c.cls]["bytes"] += c.bytes
        s[c.cls]["nodes"] += 1
    return s


# ------------------------------------------------------------------ peak figures
def _cpu_mhz() -> float | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "cpu mhz":
                return float(value)
    except (OSError, ValueError):
        return None
    return None


def measure_bandwidth_gbs(mb: int = 128, repeats: int = 5) -> float:
    """Streaming copy bandwidth (bytes read + written per second, best of `repeats`)."""
    src = np.ones(mb * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def host_peaks(host: dict | None = None, mhz: float | None = None, bandwidth_gbs: float | None = None) -> dict:
    """The host's peak figures from detect_host() and the clock (formula in the module docstring)."""
    host = host or detect_host()
    isa = host["isa"]
    clock = mhz or _cpu_mhz()
    clock_source = "/proc/cpuinfo cpu MHz" if clock else f"assumed {DEFAULT_MHZ:.0f} MHz"
    clock = clock or DEFAULT_MHZ
    per_cycle = 64 if isa.get("avx512") else 32 if isa.get("avx2") else 16 if isa.get("neon") else 8
    int8_factor = 4 if (isa.get("vnni") or isa.get("amx")) else 2
    cores = int(host.get("cores") or 1)
    fp32 = cores * clock / 1000 * per_cycle
    return {"peak_fp32_gflops": fp32, "peak_int8_gops": fp32 * int8_factor,
            "memory_bandwidth_gbs": bandwidth_gbs if bandwidth_gbs is not None else measure_bandwidth_gbs(),
            "cores": cores, "mhz": clock, "clock_source": clock_source, "fp32_flops_per_cycle": per_cycle,
            "int8_factor": int8_factor,
            "formula": "peak_fp32 = cores * MHz/1000 * fp32_flops_per_cycle; peak_int8 = peak_fp32 * int8_factor"}


def device_figures(profile: DeviceProfile, calibration: dict) -> dict:
    """Peaks, bandwidth and the core count they cover. A measured profile without figures is the host."""
    host = calibration["host"]
    if profile.peak_fp32_gflops is None and profile.peak_int8_gops is None:
        if not profile.measured:
            raise ProfileError(f"profile {profile.name!r} has no peak figures to estimate from")
        return {k: host[k] for k in ("peak_fp32_gflops", "peak_int8_gops", "memory_bandwidth_gbs", "cores")}
    # A device that only quotes one peak: an NPU quoting INT8 runs float at a quarter of it (at best);
    # a CPU quoting FP32 only gets no integer speed-up.
    fp32 = profile.peak_fp32_gflops or profile.peak_int8_gops / 4
    int8 = profile.peak_int8_gops or fp32
    bw = profile.memory_bandwidth_gbs or host["memory_bandwidth_gbs"]
    # The peak is spread over the cores it was quoted for (compute_units): one thread of a 40-core
    # server gets 1/40 of the socket's peak, not 1/max(threads). null = one accelerator.
    cores = profile.compute_units or (1 if profile.execution_provider != "CPUExecutionProvider" else max(profile.threads))
    return {"peak_fp32_gflops": fp32, "peak_int8_gops": int8, "memory_bandwidth_gbs": bw, "cores": cores}


# ------------------------------------------------------------------ time model
def _features(summary: dict, fig: dict, threads: int, alphas: dict) -> np.ndarray:
    """Time in ms = features . [1/eff_int8, 1/eff_fp32, 1/eff_other, 1/eff_mem, overhead, overhead*thread]."""
    t = min(threads, fig["cores"])
    peak = {"int8_matmul": fig["peak_int8_gops"], "fp32_matmul": fig["peak_fp32_gflops"], "other": fig["peak_fp32_gflops"]}
    compute = [summary[c]["flops"] / (peak[c] * 1e9 * t ** alphas[c] / fig["cores"]) * 1e3 for c in CLASSES]
    nbytes = sum(summary[c]["bytes"] for c in CLASSES)
    nodes = sum(summary[c]["nodes"] for c in CLASSES)
    return np.array(compute + [nbytes / (fig["memory_bandwidth_gbs"] * 1e9) * 1e3, nodes, nodes * (threads - 1)])


def _inverse(eff: float | None) -> float:
    return 0.0 if eff is None else 1.0 / eff  # None: the class's time is all in the memory and per-node terms


def _weights(params: dict) -> np.ndarray:
    return np.array([_inverse(params["eff"][c]) for c in CLASSES] + [
        _inverse(params["eff_mem"]), params["overhead_ms"], params["overhead_ms"] * params["overhead_thread"]])


def estimate_latency(onnx_path: str | Path, profile: DeviceProfile, seq_len: int | None, threads: int,
                     calibration: dict | None = None) -> dict:
    """Estimated ms per inference (batch 1) of `onnx_path` on `profile` with `threads` threads."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    cal = calibration if calibration is not None else load_calibration()
    p = cal["params"]
    seq = seq_len if seq_len is not None else profile.seq_lens[0]
    costs = graph_costs(onnx_path, seq)
    fig = device_figures(profile, cal)
    w = _weights(p)
    per_op: dict[str, float] = {}
    total = 0.0
    for c in costs:
        s = {k: {"flops": 0.0, "bytes": 0.0, "nodes": 0} for k in CLASSES}
        s[c.cls] = {"flops": c.flops, "bytes": c.bytes, "nodes": 1}
        ms = float(_features(s, fig, threads, p["alpha"]) @ w)
        key = c.op_type + (" (int8)" if c.cls == "int8_matmul" else "")
        per_op[key] = per_op.get(key, 0.0) + ms
        total += ms
    return {"ms": total, "estimated": True, "per_op_type": dict(sorted(per_op.items(), key=lambda kv: -kv[1])),
            "profile": profile.name, "seq_len": seq, "threads": threads}


# ------------------------------------------------------------------ calibration
def _nnls(a: np.ndarray, b: np.ndarray, iters: int = 200) -> np.ndarray:
    """Non-negative least squares (Lawson-Hanson active set); scipy is not a dependency."""
    n = a.shape[1]
    x, passive = np.zeros(n), np.zeros(n, bool)
    for _ in range(iters):
        grad = a.T @ (b - a @ x)
        if passive.all() or grad[~passive].max(initial=0) <= 1e-12:
            break
        passive[np.argmax(np.where(passive, -np.inf, grad))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            bad = passive & (z <= 0)
            step = np.min(x[bad] / (x[bad] - z[bad] + 1e-300))
            x = x + step * (z - x)
            passive &= x > 1e-12
    return x


def calibrate(cases: list[dict], host: dict | None = None) -> dict:
    """Fit efficiencies, thread exponents and per-node overheads to measured latencies.

    cases: dicts with onnx_path, seq_len, threads, measured_ms. Minimises the squared *relative*
    error (each case weighted by 1/measured) with non-negative inverse efficiencies, by NNLS at
    each point of a grid over the thread exponents.
    """
    if len(cases) < 6:
        raise EdgekdError(f"calibration needs at least 6 measured cases, got {len(cases)}")
    host = host or host_peaks()
    fig = {k: host[k] for k in ("peak_fp32_gflops", "peak_int8_gops", "memory_bandwidth_gbs", "cores")}
    summaries = [summarize(graph_costs(c["onnx_path"], c["seq_len"])) for c in cases]
    y = np.array([c["measured_ms"] for c in cases], dtype=float)
    grid = np.round(np.arange(0.0, 1.0001, 0.1), 2)
    best = None
    for a_int8 in grid:
        for a_fp32 in grid:
            for a_other in grid:
                alphas = {"int8_matmul": a_int8, "fp32_matmul": a_fp32, "other": a_other}
                x_mat = np.stack([_features(s, fig, c["threads"], alphas) for s, c in zip(summaries, cases)])
                w = _nnls(x_mat / y[:, None], np.ones(len(y)))
                rel = x_mat @ w / y - 1
                score = float(np.mean(rel**2))
                if best is None or score < best[0]:
                    best = (score, alphas, w, rel)
    _, alphas, w, rel = best
    # A zero inverse efficiency means the data gave that term no time: stored as None (no cost).
    eff = [float(1 / v) if v > 1e-9 else None for v in w[:4]]
    params = {"eff": dict(zip(CLASSES, eff[:3])), "eff_mem": eff[3],
              "overhead_ms": float(w[4]), "overhead_thread": float(w[5] / w[4]) if w[4] > 0 else 0.0,
              "alpha": {k: float(v) for k, v in alphas.items()}}
    return {"version": 1, "formula": FORMULA,
            "host": {k: host[k] for k in host}, "params": params,
            "fit": {"cases": len(cases), "max_abs_rel_error": float(np.max(np.abs(rel))),
                    "mean_abs_rel_error": float(np.mean(np.abs(rel)))}}


def calibration_path() -> Path:
    return Path(os.environ.get("EDGEKD_CALIBRATION", DEFAULT_CALIBRATION))


def load_calibration(path: str | Path | None = None) -> dict:
    p = Path(path) if path is not None else calibration_path()
    if not p.is_file():
        raise ProfileError(
            f"No latency-estimator calibration at {str(p)!r}: estimates need efficiencies fitted on the host. "
            "Run `python benchmarks/estimator_host.py` on the host to measure and write it, or set EDGEKD_CALIBRATION.")
    try:
        cal = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ProfileError(f"Calibration file {str(p)!r} cannot be read ({e}); rerun benchmarks/estimator_host.py.") from None
    if not isinstance(cal, dict) or "params" not in cal or "host" not in cal:
        raise ProfileError(f"Calibration file {str(p)!r} lacks 'params' or 'host'; rerun benchmarks/estimator_host.py.")
    return cal


def save_calibration(cal: dict, path: str | Path | None = None) -> Path:
    p = Path(path) if path is not None else calibration_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(cal, indent=2) + "\n", encoding="utf-8")
    return p
