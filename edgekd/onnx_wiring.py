"""How the nodes of an ONNX graph are wired: who reads each tensor.

The export's graph passes (`export/qdq.py`, `export/attention_mask.py`, `export/device.py`, `export/host_graph.py`)
and the device checks (`devices/compat.py`, `devices/graph_costs.py`) all walk a graph forward from a tensor to its
readers; onnx keeps only each node's inputs, so the reverse map is built here, once per pass.
"""
from __future__ import annotations

import onnx


def consumers_of(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in graph order (a node reading a tensor twice is listed twice)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return readers
