"""Reading QNN's reasons for rejected nodes from its log (pure parsing: runs without onnxruntime-qnn)."""
from __future__ import annotations

from edgekd.devices.qnn import rejected_nodes

# As onnxruntime-qnn 2.7 logs a rejected word-embedding Gather when it is the second model compiled in the process
LOG = """\
2026-12-06 12:05:41.26 [W:onnxruntime:, qnn_model_wrapper.cc:565 CreateQnnNode] QNN.backendValidateOpConfig() failed \
for node `/model/bert/embeddings/word_embeddings/Gather_2` of type `Gather` with error code 3110
2026-12-06 12:05:41.26 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation FAILED for 1 nodes \
in OrtNodeUnit (Gather) :
\tOperator type: Gather Node name: /model/bert/embeddings/word_embeddings/Gather Node index: 12
\tREASON : Failed to add node.
"""


def test_the_backends_reason_reaches_the_onnx_node_whatever_suffix_qnn_gave_its_name():
    gather = "/model/bert/embeddings/word_embeddings/Gather"
    (r,) = rejected_nodes(LOG, {gather})
    assert r["node"] == gather and r["op"] == "Gather"
    assert "QNN error 3110" in r["reason"] and "Failed to add node." in r["reason"]
    # a node QNN logged nothing about still gets a line, saying so
    (_, other) = rejected_nodes(LOG, {gather, "/x/Add"})
    assert other == {"node": "/x/Add", "op": None, "reason": "not in a QNN partition (QNN gave no reason)"}
