"""Qualcomm's own compiler on an NPU build: onnxruntime-qnn's HTP backend.

On x86 Linux the `onnxruntime-qnn` wheel (`pip install edgekd[qnn]`) ships Qualcomm's HTP backend, which prepares the
graph for the profile's HTP (`htp_arch`, `soc_model`) as on the phone and executes it in an emulation of the HTP's
fixed-point arithmetic. What it reports is what the vendor's compiler decides: the nodes it places on the HTP, those
it leaves to the CPU and why, and the outputs the HTP computes. Its timing means nothing (an emulation on this CPU):
NPU latency stays an estimate.

The placement comes from onnxruntime's record of which provider runs each node
(`session.record_ep_graph_assignment_info`); QNN's reason for each rejected node from its log, which onnxruntime writes
to the process's stderr only, so it is read from there (file descriptor 2, for the session's creation).
"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

QNN_EP = "QNNExecutionProvider"
_registered = False

# QNN's log lines for a node it rejects: the op builder's own check, then the HTP's validation of the op config
_FAILED_UNIT = re.compile(r"Validation FAILED for \d+ nodes in \w+ \((\w+)\) :\s*\n((?:\s+Operator type: .*\n)+)"
                          r"\s*REASON : (.*)")
_UNIT_NODE = re.compile(r"Operator type: (\w+) Node name: (\S+)")
_BACKEND_FAILED = re.compile(r"backendValidateOpConfig\(\) failed for node `([^`]+)` of type `(\w+)` with error code "
                             r"(\d+)")


def available() -> bool:
    """Whether onnxruntime-qnn (with its HTP backend) is installed."""
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    from importlib.metadata import version as dist_version

    return dist_version("onnxruntime-qnn")


def _devices():
    global _registered
    import onnxruntime as ort
    import onnxruntime_qnn

    if not _registered:
        ort.register_execution_provider_library(QNN_EP, onnxruntime_qnn.get_library_path())
        _registered = True
    return [d for d in ort.get_ep_devices() if d.ep_name == QNN_EP]


def htp_options(profile) -> dict[str, str]:
    """QNN provider options for the profile's HTP. Graph inputs and outputs are quantized on the HTP too
    (offload_graph_io_quantization 0): offloaded, the first Quantize and last Dequantize would be CPU nodes."""
    options = {"backend_type": "htp", "offload_graph_io_quantization": "0"}
    if profile.htp_arch:
        options["htp_arch"] = str(profile.htp_arch)
    if profile.soc_model:
        options["soc_model"] = str(profile.soc_model)
    return options


@contextmanager
def _stderr_to(path: Path, stdout: bool = False):
    """onnxruntime's C++ logger writes to fd 2: point it at a file for the duration. stdout: fd 1 too, for QNN's
    HTP library, which prints a line of its own configuration there when it starts (never while edgekd's progress
    bars run: a live bar writes to fd 1)."""
    import sys

    fds = (1, 2) if stdout else (2,)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    with open(path, "wb") as f:
        for fd in fds:
            os.dup2(f.fileno(), fd)
        try:
            yield
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


def htp_session(path: Path, profile, *, context: Path | None = None, embed: bool = False):
    """An onnxruntime session of `path` on the profile's HTP (CPU provider for what QNN rejects), and its placement.

    context: also write the EPContext model (the compiled context binary beside it, or inside with `embed`) there.
    Returns (session, placement): {"htp_nodes", "cpu_nodes", "partitions" (HTP subgraphs), "cpu_ops"
    {op: count}, "rejected" [{"node", "op", "reason"}]}."""
    import onnxruntime as ort

    devices = _devices()
    so = ort.SessionOptions()
    so.log_severity_level = 0  # QNN's reasons for rejected nodes are verbose-level lines
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if context is not None:
        context.parent.mkdir(parents=True, exist_ok=True)
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_file_path", str(context))
        so.add_session_config_entry("ep.context_embed_mode", "1" if embed else "0")
    so.add_provider_for_devices(devices, htp_options(profile))
    with tempfile.TemporaryDirectory(prefix="edgekd-qnn-") as tmp:
        log = Path(tmp) / "qnn.log"
        with _stderr_to(log, stdout=True):
            session = ort.InferenceSession(str(path), so)
        text = log.read_text(encoding="utf-8", errors="replace")
    return session, _placement(session, text)


@contextmanager
def silenced():
    """Inside: onnxruntime's stderr goes nowhere. For runs of a session created at verbose level (for the
    placement), whose every run logs each QNN graph execution."""
    with tempfile.TemporaryDirectory(prefix="edgekd-qnn-") as tmp, _stderr_to(Path(tmp) / "run.log"):
        yield


def load_context_model(path: Path, profile):
    """A session of an EPContext model (what a Snapdragon app loads: the compiled HTP graph, no compiling)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_provider_for_devices(_devices(), htp_options(profile))
    return ort.InferenceSession(str(path), so)


def _placement(session, log: str) -> dict:
    htp, cpu, partitions, cpu_ops = 0, [], 0, {}
    for subgraph in session.get_provider_graph_assignment_info():
        nodes = subgraph.get_nodes()
        if subgraph.ep_name == QNN_EP:
            htp += len(nodes)
            partitions += 1
        else:
            for n in nodes:
                cpu.append(n.name)
                cpu_ops[n.op_type] = cpu_ops.get(n.op_type, 0) + 1
    return {"htp_nodes": htp, "cpu_nodes": len(cpu), "partitions": partitions, "cpu_ops": cpu_ops,
            "rejected": rejected_nodes(log, set(cpu))}


def _onnx_name(qnn_name: str, cpu_nodes: set[str]) -> str:
    """The ONNX node a QNN node name stands for: QNN suffixes `_N` to keep the names of a process's QNN graphs unique
    (the second model compiled in one process names its Gather `…/Gather_2`)."""
    if qnn_name in cpu_nodes:
        return qnn_name
    base = re.sub(r"_\d+$", "", qnn_name)
    return base if base in cpu_nodes else qnn_name


def rejected_nodes(log: str, cpu_nodes: set[str]) -> list[dict]:
    """QNN's reason for each node left to the CPU, read from its log (the node names onnxruntime placed on the CPU)."""
    reasons: dict[str, dict] = {}

    def add(name: str, op: str, reason: str) -> None:
        entry = reasons.setdefault(name, {"node": name, "op": op, "reason": ""})
        if reason not in entry["reason"]:
            entry["reason"] = f"{entry['reason']}; {reason}" if entry["reason"] else reason

    for name, op, code in _BACKEND_FAILED.findall(log):  # the HTP's own verdict first: the more specific
        add(_onnx_name(name, cpu_nodes), op, f"the HTP backend rejected its op config (QNN error {code})")
    for m in _FAILED_UNIT.finditer(log):
        for op, name in _UNIT_NODE.findall(m.group(2)):
            add(name, op, m.group(3).strip())
    out = [reasons[n] for n in sorted(cpu_nodes) if n in reasons]
    out += [{"node": n, "op": None, "reason": "not in a QNN partition (QNN gave no reason)"}
            for n in sorted(cpu_nodes) if n not in reasons]
    return out


def run_on_htp(session, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """The logits the HTP computes, one static-shaped example at a time (batch 1, as the build is shaped)."""
    names = [i.name for i in session.get_inputs()]
    out = [session.run(None, {k: v for k, v in feed.items() if k in names})[0] for feed in feeds]
    return np.concatenate(out, axis=0)
