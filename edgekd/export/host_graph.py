"""The host's INT8 layout "fused": onnxruntime's optimised graph of the QAT model, with Linear biases folded into
its integer kernels, saved as the model to ship.

onnxruntime turns each QDQ Linear (DQ(x) -> MatMul -> Add(bias)) into MatMulIntegerToFloat but leaves the bias
Add beside it as a separate float op over the whole [batch, sequence, width] output, although the kernel takes
an optional bias input and adds it while the output is still in cache: on the flagship student 15 of the graph's
Adds are such biases, and folding them made the INT8 model 1.085x faster with bit-identical outputs (quick
benchmark's model, seq 128, 1 thread). No onnxruntime fusion or tool does this fold for the QDQ path (its
MatMulIntegerToFloat fusion folds the bias only for dynamically quantized MatMulInteger -> Mul -> Add chains), so
it is written here, on the graph onnxruntime itself produced.

The graph is saved at ORT_ENABLE_EXTENDED, not ORT_ENABLE_ALL: extended fusions are the CPU execution provider's
and do not depend on the processor, while ALL adds layout transforms for the CPU that optimised the graph
(onnxruntime's docs: an offline-optimised model must run on the provider and hardware it was optimised for). It
uses com.microsoft operators, so it runs on onnxruntime only: the standard QDQ graph ships beside it for other
runtimes and for ORT-format (mobile) builds.
"""
from __future__ import annotations

from pathlib import Path

from ..devices.kernels import optimized_graph
from ..onnx_wiring import consumers_of

# MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias): the bias is input 6
_BIAS_INPUT = 6


def fold_matmul_biases(model) -> int:
    """Fold Add(MatMulIntegerToFloat(...), bias) into the kernel's bias input, in place; returns how many.

    Only where the fold is exact: the MatMul's output feeds nothing but that Add and is not a graph output, and
    the other operand is a float constant of shape [N] (N = the weight's output width), so that broadcasting
    adds it to every row as the kernel's bias does.
    """
    from onnx import TensorProto

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers = consumers_of(g)
    producers = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    drop = []
    for add in g.node:
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
            continue
        for i, other in ((0, 1), (1, 0)):
            mm = producers.get(add.input[i])
            bias = inits.get(add.input[other])
            if (mm is None or mm.op_type != "MatMulIntegerToFloat" or mm.domain != "com.microsoft" or bias is None
                    or bias.data_type != TensorProto.FLOAT or len(bias.dims) != 1
                    or (len(mm.input) > _BIAS_INPUT and mm.input[_BIAS_INPUT])
                    or len(consumers.get(mm.output[0], [])) != 1 or mm.output[0] in outputs):
                continue
            weight = inits.get(mm.input[1])
            if weight is None or len(weight.dims) != 2 or weight.dims[1] != bias.dims[0]:
                continue
            while len(mm.input) <= _BIAS_INPUT:
                mm.input.append("")  # an omitted optional input
            mm.input[_BIAS_INPUT] = bias.name
            mm.output[0] = add.output[0]
            drop.append(add)
            break
    for add in drop:
        g.node.remove(add)
    return len(drop)


def fused_host_graph(src: str | Path, dst: str | Path) -> tuple[Path, dict]:
    """The "fused" INT8 layout of the QDQ model `src`, written to `dst`: (dst, {"biases_folded", "level"})."""
    import onnx

    model = optimized_graph(src, dst, level="ORT_ENABLE_EXTENDED")
    folded = fold_matmul_biases(model)
    onnx.save(model, str(dst))
    return Path(dst), {"biases_folded": folded, "level": "ORT_ENABLE_EXTENDED", "built_from": Path(src).name}
