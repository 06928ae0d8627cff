"""Device profiles as data: `<name>.yaml` -> a validated, frozen `DeviceProfile`.

Where the files are found (a user folder, then the shipped ones) is profile_folders.py.
A profile says how a device wants to be fed (threads, shapes, quantization scheme, operators)
and, for a device that is not present, the public peak figures an estimate is built from.
Loading errors name the file, the field path and the bad value, and say what to do.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import psutil
import yaml
from pydantic import Field, ValidationError, model_validator

from ..configs import Strict, type_hint
from ..errors import ProfileError
from ..yamlio import safe_load
from .profile_folders import ProfileFile, profile_files, searched

if TYPE_CHECKING:  # importlib.resources.abc is Python 3.11+; annotations only
    from importlib.resources.abc import Traversable

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


class QuantScheme(Strict):
    """The INT8 layout a device runs fast (and accurately)."""

    # uint16: 16-bit activations with 8-bit weights (w8a16), Qualcomm's recommended scheme for transformers on the HTP
    activation_dtype: Literal["uint8", "int8", "uint16"]
    # int8: symmetric signed weights (x86/ARM CPU kernels); uint8: what the device's own tooling
    # emits (e.g. onnxruntime's QNN config defaults to uint8 weights for the Hexagon NPU).
    weight_dtype: Literal["int8", "uint8"] = "int8"
    weight_granularity: Literal["per-channel", "per-tensor"] = "per-channel"
    # linear: only MatMul/Gemm/Conv inputs are quantized (Softmax, LayerNorm, GELU stay float);
    # full: every activation, attention MatMuls included, as integer-only NPUs need.
    scope: Literal["linear", "full"] = "linear"
    reason: str = ""


class DeviceProfile(Strict):
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    description: str
    measured: bool = Field(..., description="True: measured here (host); False: estimated from peak figures")
    execution_provider: str = "CPUExecutionProvider"
    fallback_providers: list[str] = Field(default_factory=list)
    threads: list[PositiveInt] = Field(..., min_length=1)
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1], min_length=1)
    seq_lens: list[PositiveInt] = Field(..., min_length=1)
    quantization: QuantScheme
    static_shapes: bool = False
    opset: int | None = Field(None, ge=13, le=21, description="ONNX opset the device's runtime reads; default: "
                              "export.opset, else 17")
    width_multiple: PositiveInt = Field(1, description="channel counts the device computes without waste: its "
                                        "vector width in floats (x86 AVX-512: 16, ARM NEON: 4-8) or its tile (NPUs: 32-64)")
    ort_format: bool = Field(False, description="also ship the model in ORT format (model.ort) for onnxruntime-mobile "
                             "builds, which read no .onnx")
    supported_ops: list[str] | None = Field(
        None, description="ONNX op types the device runs ('domain:Op' outside the default domain); "
                          "None: everything onnxruntime's CPU provider runs")
    # The target's CPU features that select onnxruntime's integer kernels (/proc/cpuinfo names:
    # avx512_vnni, asimddp, i8mm, ...). Empty for the host (detected at run time) and for NPUs.
    isa: list[str] = Field(default_factory=list)
    # Cores the peak figures are summed over, so an estimate for `threads` cores can scale them;
    # None: the figures are for the whole accelerator (an NPU has no thread count to scale by).
    compute_units: PositiveInt | None = None
    # Required (null allowed) so that every profile states them explicitly.
    peak_int8_gops: PositiveFloat | None
    peak_fp32_gflops: PositiveFloat | None
    memory_bandwidth_gbs: PositiveFloat | None
    memory_budget_mb: PositiveFloat | None
    sources: list[str] = Field(default_factory=list, description="public sources of the figures")
    # Qualcomm HTP (execution_provider QNNExecutionProvider): what onnxruntime-qnn compiles an NPU build for
    htp_arch: int | None = Field(None, description="HTP architecture version the build is prepared for (75: "
                                 "Snapdragon 8 Gen 3, 79: 8 Elite)")
    soc_model: int | None = Field(None, description="QNN's SoC id (57: SM8650, Snapdragon 8 Gen 3; 69: SM8750)")
    full_offload: bool = Field(False, description="the whole graph is meant to run on the accelerator: a build that "
                               "leaves nodes to the CPU is refused unless export.npu_fallback is allow")

    @model_validator(mode="after")
    def _estimable(self):
        # An estimated device is only as good as its figures: without compute and bandwidth
        # there is nothing to estimate from, and without sources nobody can check them.
        if not self.measured:
            if self.peak_int8_gops is None and self.peak_fp32_gflops is None:
                raise ValueError("an estimated profile (measured: false) needs peak_int8_gops or peak_fp32_gflops")
            if self.memory_bandwidth_gbs is None:
                raise ValueError("an estimated profile (measured: false) needs memory_bandwidth_gbs")
            if not self.sources:
                raise ValueError("an estimated profile (measured: false) needs sources for its figures")
        return self


def _resolve(name_or_path: str) -> Traversable:
    looks_like_path = name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path or "/" in name_or_path
    if looks_like_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise ProfileError(f"Profile file {str(path)!r} does not exist; give a profile name or the path of a YAML profile.")
        return path
    found = profile_files()
    if name_or_path not in found:
        raise ProfileError(
            f"Unknown device profile {name_or_path!r}: no {name_or_path}.yaml in {searched()}. "
            f"Available profiles: {', '.join(found) or 'none'}. Use one of these names, give the path of a YAML "
            f"profile, or put {name_or_path}.yaml in a folder given with --profiles-dir or EDGEKD_PROFILES_DIR."
        )
    return found[name_or_path].path


def _stem(path: Traversable) -> str:
    return path.name.rsplit(".", 1)[0]


def _field_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
    return path or "<profile>"


def _format_errors(err: ValidationError, path: Traversable) -> str:
    parts = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (misspelled?); remove it"
        msg += type_hint(e)
        shown = "" if e["type"] == "missing" or isinstance(value, (dict, list)) else f" (got {value!r})"
        parts.append(f"{_field_path(e['loc'])}: {msg}{shown}")
    return (
        f"Invalid device profile {str(path)!r}: " + "; ".join(parts)
        + ". Fix these fields (`edgekd profiles show host-cpu` prints a complete example)."
    )


def _read_yaml(path: Traversable) -> dict[str, Any]:
    try:
        raw = safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ProfileError(f"Profile file {str(path)!r} is not UTF-8 text ({e.reason}); save it as UTF-8.") from None
    except OSError as e:
        raise ProfileError(f"Profile file {str(path)!r} cannot be read ({e.strerror}); check it exists and is readable.") from None
    except yaml.YAMLError as e:
        raise ProfileError(f"Profile file {str(path)!r} is not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ProfileError(
            f"Profile file {str(path)!r} must be a YAML mapping with keys name, description, measured, threads, "
            f"seq_lens, quantization, …; got {type(raw).__name__}."
        )
    return raw


def load_profile(name_or_path: str) -> DeviceProfile:
    """A profile by name (the user folder first, then the shipped profiles) or by path to a YAML file."""
    return _load_file(_resolve(str(name_or_path)))


def _load_file(path: Traversable) -> DeviceProfile:
    raw = _read_yaml(path)
    try:
        profile = DeviceProfile.model_validate(raw)
    except ValidationError as e:
        raise ProfileError(_format_errors(e, path)) from None
    if profile.name != _stem(path):
        # The name is how recipes refer to a profile: a file whose stem differs would be unreachable by it.
        raise ProfileError(
            f"Profile file {str(path)!r}: name: {profile.name!r} does not match the file name {_stem(path)!r}; "
            f"rename the file to {profile.name}.yaml or set name: {_stem(path)}."
        )
    return profile


def any_full_int8(names: list[str]) -> bool:
    """Whether a profile among `names` runs every activation in INT8 (an integer NPU: attention's products too)."""
    return any(load_profile(n).quantization.scope == "full" for n in names)


def list_profiles() -> list[DeviceProfile]:
    """Every profile by name, a user one in place of the shipped one it overrides."""
    return [profile for profile, _ in list_profile_files()]


def list_profile_files() -> list[tuple[DeviceProfile, ProfileFile]]:
    """Every profile with the file it came from (`edgekd profiles` shows the folder)."""
    return [(_load_file(f.path), f) for f in profile_files().values()]


def _cpuinfo() -> tuple[str | None, set[str]]:
    """CPU model name and ISA flags from /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "hardware", "cpu model", "processor") and not value.strip().isdigit():
            model = value.strip() or None
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def detect_host() -> dict:
    model, flags = _cpuinfo()
    return {
        "cpu": model or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "isa": {
            "avx2": "avx2" in flags,
            "avx512": "avx512f" in flags,
            "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
            "amx": "amx_tile" in flags,
            "neon": "asimd" in flags or "neon" in flags,
        },
        "arch": platform.machine(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 2),
    }
