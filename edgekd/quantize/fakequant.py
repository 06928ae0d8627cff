"""INT8 fake quantization of Linear / Conv layers for QAT, exportable to ONNX QDQ.

Weights: per-output-channel symmetric int8, scale = max|w| / qmax with qmax 127, or 63 ("int7",
onnxruntime's reduce_range) for x86 CPUs without VNNI: their u8 x s8 kernels add pairs of products
in int16 and saturate with full-range weights — measured here as 95% argmax agreement with
PyTorch at int8 and 100% at int7. The op's range is [-128, 127] because ONNX's QuantizeLinear has
no restricted-range int8; values stay within [-qmax, qmax].
Activations (the layer's input): per-tensor, uint8 asymmetric by default (x86 integer kernels
want u8 x s8), range tracked by an exponential moving average of each batch's range, then frozen.
A batch's range comes from its observer: `minmax` (the extremes), `percentile` (clips the rare
outliers of GELU/attention outputs) or `mse` (the clipping of the extremes that minimises the
batch's quantization error, searched on a grid).

Embedding tables: per-row symmetric int8 (one scale per token), no activation quantization: the
export stores the table as int8 and dequantizes only the rows a sequence gathers (export/qdq.py),
so the table is 4x smaller on disk and no inference dequantizes the whole table.

The quantized classes subclass nn.Linear / nn.Conv* / nn.Embedding, so parameter names do not
change and a module is converted by swapping its class and adding buffers: the QAT state (ranges)
is saved in the same safetensors file as the weights.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgekdError

_OBSERVER_SAMPLE = 1 << 18  # values a percentile / mse observer looks at per batch
_MSE_GRID = [0.85 ** i for i in range(20)]  # clip factors 1.0 .. 0.046 of the batch's extremes

OUTPUT_QUANT = "output_quant"  # the child of a QuantLinear that quantizes its output (spec names end with it)

# mode: "off" (float), "calibrate" (observe ranges, no quantization), "train" (observe + fake quant),
# "frozen" (fake quant with fixed ranges — what is exported).
MODES = ("off", "calibrate", "train", "frozen")


class _FakeQuantMixin:
    act_min: torch.Tensor
    act_max: torch.Tensor
    w_scale: torch.Tensor

    def _init_quant(self, activation_dtype: str = "uint8", ema_decay: float = 0.99, weight_qmax: int = 127,
                    observer: str = "minmax", percentile: float = 99.99) -> None:
        self.register_buffer("act_min", torch.tensor(float("inf")))
        self.register_buffer("act_max", torch.tensor(float("-inf")))
        if hasattr(self, "weight"):  # an OutputQuant has a range and no weight
            self.register_buffer("w_scale", torch.ones(self.weight.shape[0]))
        self.activation_dtype = activation_dtype
        self.ema_decay = ema_decay
        self.weight_qmax = weight_qmax  # 127 (int8) or 63 (int7: no int16 saturation in u8s8 kernels without VNNI)
        self.observer = observer
        self.percentile = percentile
        self.quant_mode = "frozen"

    # ------------------------------------------------------------------ activations
    @property
    def act_qrange(self) -> tuple[int, int]:
        return {"uint8": (0, 255), "uint16": (0, 65535)}.get(self.activation_dtype, (-128, 127))

    def act_qparams(self) -> tuple[float, int]:
        qmin, qmax = self.act_qrange
        lo = min(float(self.act_min), 0.0)  # the range must contain 0 so that zero (padding) is exact
        hi = max(float(self.act_max), 0.0)
        if self.activation_dtype == "int8":  # symmetric signed
            scale = max(abs(lo), abs(hi)) / 127.0
            return max(scale, 1e-8), 0
        scale = max((hi - lo) / float(qmax - qmin), 1e-8)
        zp = int(round(qmin - lo / scale))
        return scale, min(max(zp, qmin), qmax)

    def _batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = x.min(), x.max()
        observer = getattr(self, "observer", "minmax")
        if observer == "minmax":
            return lo, hi
        flat = x.detach().reshape(-1)
        if flat.numel() > _OBSERVER_SAMPLE:  # a strided sample: quantile and the search stay cheap
            flat = flat[:: flat.numel() // _OBSERVER_SAMPLE + 1]
        flat = flat.float()
        if observer == "percentile":
            q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], device=flat.device)
            plo, phi = torch.quantile(flat, q)
            return torch.minimum(plo, torch.zeros_like(plo)), torch.maximum(phi, torch.zeros_like(phi))
        # mse: clip each extreme in turn (the top, then the bottom), keeping the clip with the least squared error
        qmin, qmax = self.act_qrange

        def error(clo: float, chi: float) -> float:
            clo, chi = min(clo, 0.0), max(chi, 0.0)
            scale = max((chi - clo) / (qmax - qmin), 1e-8)
            zp = int(min(max(round(qmin - clo / scale), qmin), qmax))
            return float((torch.fake_quantize_per_tensor_affine(flat, scale, zp, qmin, qmax) - flat).pow(2).mean())

        blo, bhi = float(lo), float(hi)
        bhi = min((bhi * f for f in _MSE_GRID), key=lambda h: error(blo, h))
        blo = min((blo * f for f in _MSE_GRID), key=lambda v: error(v, bhi))
        return torch.tensor(blo, device=x.device), torch.tensor(bhi, device=x.device)

    def _observe(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            lo, hi = self._batch_range(x)
            if torch.isinf(self.act_min):
                self.act_min.copy_(lo)
                self.act_max.copy_(hi)
            else:
                d = self.ema_decay
                self.act_min.mul_(d).add_((1 - d) * lo)
                self.act_max.mul_(d).add_((1 - d) * hi)

    # ------------------------------------------------------------------ learned ranges (LSQ)
    def learn_range(self) -> None:
        """Make the calibrated activation range a trained parameter: LSQ (Esser et al. 2020), through torch's
        learnable fake quantization, whose gradients reach the scale (and an asymmetric zero point). Until
        `freeze`, which writes the learned range back to act_min/act_max and removes the parameters — so the
        saved model and its export are those of any other range."""
        scale, zp = self.act_qparams()
        device = self.act_min.device
        self.act_scale_learned = nn.Parameter(torch.tensor([scale], device=device))
        self.act_zp_learned = nn.Parameter(torch.tensor([float(zp)], device=device),
                                           requires_grad=self.activation_dtype == "uint8")

    def _learned(self, x: torch.Tensor) -> torch.Tensor:
        qmin, qmax = self.act_qrange
        scale = self.act_scale_learned.abs().clamp_min(1e-8)
        # LSQ's gradient scale 1 / sqrt(elements x qmax) keeps the step size's updates in proportion to the weights'
        return torch._fake_quantize_learnable_per_tensor_affine(x, scale, self.act_zp_learned, qmin, qmax,
                                                                 1.0 / math.sqrt(x.numel() * qmax))

    def _settle_learned(self) -> None:
        if not hasattr(self, "act_scale_learned"):
            return
        qmin, qmax = self.act_qrange
        scale = float(self.act_scale_learned.detach().abs().clamp_min(1e-8))
        zp = min(max(round(float(self.act_zp_learned.detach())), qmin), qmax)
        self.act_min.fill_((qmin - zp) * scale)
        self.act_max.fill_((qmax - zp) * scale)
        del self.act_scale_learned, self.act_zp_learned

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.quant_mode
        if mode == "off":
            return x
        if x.dtype != torch.float32:  # mixed precision hands bf16/fp16 in; ranges and fake quant are float32
            x = x.float()
        if mode == "train" and hasattr(self, "act_scale_learned"):
            return self._learned(x)
        if mode in ("calibrate", "train"):
            self._observe(x)
            if mode == "calibrate":
                return x
        scale, zp = self.act_qparams()
        qmin, qmax = self.act_qrange
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)

    # ------------------------------------------------------------------ weights
    def _weight_scale(self) -> torch.Tensor:
        w = self.weight.detach()
        amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
        return torch.clamp(amax / float(self.weight_qmax), min=1e-8)

    def _quant_weight(self) -> torch.Tensor:
        mode = self.quant_mode
        if mode in ("off", "calibrate"):
            return self.weight
        scale = self.w_scale if mode == "frozen" else self._weight_scale()
        zp = torch.zeros(self.weight.shape[0], dtype=torch.int32, device=self.weight.device)
        return torch.fake_quantize_per_channel_affine(self.weight, scale.float(), zp, 0, -128, 127)

    def freeze(self, name: str) -> dict:
        """Fix the ranges; refuse a collapsed range (a layer whose input never varied)."""
        self._settle_learned()
        if torch.isinf(self.act_min) or float(self.act_max - self.act_min) < 1e-6:
            raise EdgekdError(
                f"QAT: the activation range of layer {name!r} collapsed to [{float(self.act_min):.3g}, "
                f"{float(self.act_max):.3g}]. Likely cause: too few calibration batches or a dead layer; raise "
                "qat.calibration_batches or check the model before QAT."
            )
        self.quant_mode = "frozen"
        scale, zp = self.act_qparams()
        info = {"act_min": float(self.act_min), "act_max": float(self.act_max), "act_scale": scale,
                "act_zero_point": zp, "act_dtype": self.activation_dtype}
        if not hasattr(self, "weight"):
            return {**info, "quantizes": "output"}
        self.w_scale.copy_(self._weight_scale())
        return {**info, "w_scale_min": float(self.w_scale.min()), "w_scale_max": float(self.w_scale.max())}


class QuantLinear(_FakeQuantMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(self._quant_input(x), self._quant_weight(), self.bias)
        out = self._modules.get(OUTPUT_QUANT)  # attention's Q/K/V on a full-INT8 target (OutputQuant)
        return out(y) if out is not None else y


class QuantConv1d(_FakeQuantMixin, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quant_input(x), self._quant_weight(), self.bias)


class QuantConv2d(_FakeQuantMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quant_input(x), self._quant_weight(), self.bias)


class OutputQuant(_FakeQuantMixin, nn.Module):
    """A fake-quantized *output*, observed and frozen like a layer's input range; it has no weight.

    Used where the next integer kernel's input is not a quantized layer's: a Linear's output that feeds a matrix
    product of two activations (attention's Q, K and V — `QuantLinear.output_quant`, for profiles that run
    attention in INT8), and the last conv block of a CNN (`QuantReLU`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._quant_input(x)


class QuantReLU(OutputQuant, nn.ReLU):
    """The output of a CNN student's last conv block (conv -> ReLU), fake-quantized.

    Every other conv's output is quantized by its consumer (the next conv quantizes its own input), but the
    last one feeds pooling, whose input nobody quantized: onnxruntime then ran that conv as a float FusedConv
    between a DequantizeLinear and nothing (measured on the quickstart CNN). With its output quantized, the
    exported `DQ -> Conv -> Relu -> Q` is what onnxruntime fuses into QLinearConv (the Relu folds into the
    output's zero point).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._quant_input(F.relu(x))


class QuantEmbedding(nn.Embedding):
    """Embedding table fake-quantized per row (symmetric int8, one scale per token id).

    Its output is not quantized: it is the residual stream (plus positions, then LayerNorm), whose
    next quantized consumer is a Linear layer that quantizes its own input.
    """

    w_scale: torch.Tensor

    def _init_quant(self, *_, weight_qmax: int = 127, **__) -> None:
        self.register_buffer("w_scale", torch.ones(self.weight.shape[0]))
        self.weight_qmax = 127  # a gathered row is dequantized to float: no integer kernel saturates
        self.quant_mode = "frozen"

    def _weight_scale(self) -> torch.Tensor:
        amax = self.weight.detach().abs().amax(dim=1)
        return torch.clamp(amax / float(self.weight_qmax), min=1e-8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.quant_mode in ("train", "frozen"):
            scale = self.w_scale if self.quant_mode == "frozen" else self._weight_scale()
            zp = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
            w = torch.fake_quantize_per_channel_affine(w, scale.float(), zp, 0, -128, 127)
        return F.embedding(ids, w, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                           self.sparse)

    def freeze(self, name: str) -> dict:
        self.w_scale.copy_(self._weight_scale())
        self.quant_mode = "frozen"
        return {"rows": int(self.w_scale.numel()), "w_scale_min": float(self.w_scale.min()),
                "w_scale_max": float(self.w_scale.max()), "weights": "int8 per-row symmetric"}


_QUANT_CLASS = {nn.Linear: QuantLinear, nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Embedding: QuantEmbedding,
                nn.ReLU: QuantReLU}
_QUANTIZED = (_FakeQuantMixin, QuantEmbedding)  # every class whose forward has a quant_mode


def quantizable_modules(model: nn.Module, embeddings: bool = True, attention_matmuls: bool = False) -> list[str]:
    """Linear/Conv layers, the output of each conv stack's last block (QuantReLU), embedding tables unless
    `embeddings` is False, and with `attention_matmuls` the outputs of every attention's Q/K/V projections (the
    inputs of its two activation-by-activation matrix products; the third, the softmax output, has the fixed
    range [0, 1])."""
    names = [name for name, m in model.named_modules()
             if type(m) in _QUANT_CLASS and type(m) is not nn.ReLU and (embeddings or type(m) is not nn.Embedding)]
    if attention_matmuls:
        from ..models.spec import attention_projections

        ids = {id(m): name for name, m in model.named_modules()}
        names += [f"{ids[id(p)]}.{OUTPUT_QUANT}" for m in model.modules() if (found := attention_projections(m))
                  for p in found[0]]
    return names + _last_conv_outputs(model)


def _last_conv_outputs(model: nn.Module) -> list[str]:
    """The ReLU closing each nn.Sequential of conv blocks (conv [-> norm] -> ReLU [-> pool] ...), when a conv
    precedes it: the one conv output no later layer quantizes."""
    found = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        convs = [i for i, (_, m) in enumerate(children) if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        relus = [i for i, (_, m) in enumerate(children) if type(m) is nn.ReLU]
        if convs and relus and relus[-1] > convs[-1]:
            found.append(f"{parent_name}.{children[relus[-1]][0]}" if parent_name else children[relus[-1]][0])
    return found


def convert(model: nn.Module, names: list[str], activation_dtype: str, ema_decay: float = 0.99,
            weight_qmax: int = 127, observer: str = "minmax", percentile: float = 99.99) -> None:
    """Swap the named Linear/Conv modules to their fake-quant classes, in place (parameters kept)."""
    for name in names:
        parent, _, child = name.rpartition(".")
        if child == OUTPUT_QUANT:  # a Linear's output: a new child, added after the Linear itself is converted
            m = OutputQuant()
            model.get_submodule(parent).add_module(OUTPUT_QUANT, m)
            m._init_quant(activation_dtype, ema_decay, weight_qmax, observer, percentile)
            continue
        m = model.get_submodule(name)
        cls = _QUANT_CLASS.get(type(m))
        if cls is None:
            raise EdgekdError(f"QAT: module {name!r} is a {type(m).__name__}, which edgekd cannot quantize.")
        m.__class__ = cls
        m._init_quant(activation_dtype, ema_decay, weight_qmax, observer, percentile)


def learn_ranges(model: nn.Module) -> int:
    """LSQ for every calibrated activation range (`_FakeQuantMixin.learn_range`); returns how many."""
    layers = [m for m in model.modules() if isinstance(m, _FakeQuantMixin)]
    for m in layers:
        m.learn_range()
    return len(layers)


def set_mode(model: nn.Module, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(mode)
    for m in model.modules():
        if isinstance(m, _QUANTIZED):
            # an embedding has no activation range to observe: it is float while calibrating
            m.quant_mode = "off" if mode == "calibrate" and isinstance(m, QuantEmbedding) else mode


@contextmanager
def output_quant_off(model: nn.Module) -> Iterator[None]:
    """Attention's Q/K/V outputs in float (OutputQuant under a QuantLinear off), everything else as it is: the
    CPU build of a model whose QAT also quantized them for an integer NPU (a float attention product is only
    more precise; onnxruntime's CPU kernels for it are float)."""
    outs = [m for m in model.modules() if isinstance(m, QuantLinear) and OUTPUT_QUANT in m._modules]
    modes = [m._modules[OUTPUT_QUANT].quant_mode for m in outs]
    for m in outs:
        m._modules[OUTPUT_QUANT].quant_mode = "off"
    try:
        yield
    finally:
        for m, mode in zip(outs, modes):
            m._modules[OUTPUT_QUANT].quant_mode = mode


@contextmanager
def eight_bit_activations(model: nn.Module) -> Iterator[int]:
    """16-bit activation fake quant (qat.activation_dtype uint16) at 8-bit steps over the same learned range, for
    the export of a CPU model: CPU integer kernels take 8-bit activations, and torch's ONNX exporter writes fake
    quantization only for 8-bit ranges. Yields how many layers were switched; restores them after."""
    layers = [m for m in model.modules() if isinstance(m, _FakeQuantMixin) and m.activation_dtype == "uint16"]
    for m in layers:
        m.activation_dtype = "uint8"
    try:
        yield len(layers)
    finally:
        for m in layers:
            m.activation_dtype = "uint16"


@contextmanager
def fake_quant_off(model: nn.Module) -> Iterator[dict[str, nn.Module]]:
    """Switch fake quantization off (a float export of a QAT model), restoring each layer's mode after.

    Yields the layers with a learned activation range (Linear/Conv) by name.
    """
    every = {name: m for name, m in model.named_modules() if isinstance(m, _QUANTIZED)}
    modes = {name: m.quant_mode for name, m in every.items()}
    for m in every.values():
        m.quant_mode = "off"
    try:
        yield {name: m for name, m in every.items() if isinstance(m, _FakeQuantMixin) and hasattr(m, "weight")}
    finally:
        for name, m in every.items():
            m.quant_mode = modes[name]


def wrap_quantized(model: nn.Module, quant_spec: dict) -> None:
    """Rebuild path: convert the modules a spec lists, frozen (buffers come from the weights file)."""
    scheme = quant_spec["scheme"]
    convert(model, quant_spec["modules"], scheme["activation_dtype"], weight_qmax=scheme.get("weight_qmax", 127))
    set_mode(model, "frozen")
    model.edgekd_quant = quant_spec


def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold every BatchNorm that directly follows a Conv (inside an nn.Sequential) into the conv.

    Done before QAT so that the quantized weights are the ones the device runs; a BN left after a
    quantized conv would either stay in float or be folded later into already-quantized weights.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (n1, a), (n2, b) in zip(children, children[1:]):
            if isinstance(a, (nn.Conv1d, nn.Conv2d)) and isinstance(b, (nn.BatchNorm1d, nn.BatchNorm2d)):
                setattr(parent, n1, fuse_conv_bn_eval(a.eval(), b.eval()))
                setattr(parent, n2, nn.Identity())
                folded.append(f"{parent_name}.{n2}" if parent_name else n2)
    return folded
