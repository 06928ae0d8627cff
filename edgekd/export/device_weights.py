"""Which weights an integer-NPU build starts from: the QAT model's, or those of the model QAT started from.

QAT tunes the weights against the error of the scheme it trains (qat.activation_dtype, 8-bit by default), and pays
for that robustness with a little float accuracy. A device build whose activations are wider than QAT's (w8a16 after
8-bit QAT) barely quantizes them: it is as accurate as the float weights it starts from, so the weights QAT started
from serve it better (docs/devices.md has the measurement). The export stage is handed the QAT artifact only; the one
it was made from is found beside it (a run's stages/ folder), and where it is not, the build says so and takes the
QAT weights.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..artifact import parent_artifact
from ..errors import EdgekdError
from ..models.spec import load_model_from_artifact
from ..progress import log

BITS = {"uint8": 8, "int8": 8, "uint16": 16}


def device_weights(qat_model: nn.Module, artifact, profile, choice: str | None, trim: Callable[[nn.Module], None],
                   loaded: dict) -> tuple[nn.Module, dict]:
    """(the model to build `profile`'s device model from, what the manifest records about it).

    choice: export.device_weights (None = auto). `trim` makes a freshly loaded model take the export's vocabulary and
    position trimming; `loaded` caches the pre-QAT model across the run's device builds.
    """
    scheme = (artifact.spec.get("quant") or {}).get("scheme")
    if scheme is None:  # not a QAT model: its weights are the only ones
        return qat_model, {"from": "float", "artifact": artifact.id}
    qat_bits, device_bits = BITS.get(scheme.get("activation_dtype"), 8), BITS[profile.quantization.activation_dtype]
    qat = {"from": "qat", "artifact": artifact.id}
    if choice == "qat":
        return qat_model, {**qat, "reason": "export.device_weights: qat"}
    if choice != "pre-qat" and device_bits <= qat_bits:
        return qat_model, {**qat, "reason": f"QAT trained for the build's {device_bits}-bit activations"}
    why = ("export.device_weights: pre-qat" if choice == "pre-qat" else
           f"the build's activations are {device_bits}-bit, QAT trained for {qat_bits}: at this width the build is as "
           "accurate as its float weights, and QAT traded float accuracy for robustness at its own")
    if "source" not in loaded:
        loaded["source"] = source = parent_artifact(artifact)
        if source is not None:
            loaded["model"] = load_model_from_artifact(source)
            trim(loaded["model"])
    source = loaded["source"]
    if source is None:
        where = (f"the artifact it was made from ({artifact.manifest.get('parent')}) is not beside it in "
                 f"{artifact.path.parent}")
        if choice == "pre-qat":
            raise EdgekdError(f"export for {profile.name}: export.device_weights is pre-qat, but {where}. Export from "
                              "the run folder the QAT artifact belongs to, or set export.device_weights: qat.")
        log(f"[yellow]export: {profile.name} built from the QAT weights: {where}[/]")
        return qat_model, {**qat, "reason": f"{why}; but {where}"}
    log(f"export: {profile.name} built from the weights QAT started from ({source.stage} {source.id}): {why}")
    return loaded["model"], {"from": "pre-qat", "artifact": source.id, "stage": source.stage, "reason": why}
