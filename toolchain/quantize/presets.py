"""Hardware presets for int8: which formats and ranges suit the CPU the model will run on.

Like optimum's `AutoQuantizationConfig.avx2()/avx512_vnni()/arm64()`, a preset is a named set of
choices; every choice can be overridden one by one in the stage config.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    name: str
    activation_type: str  # "quint8" or "qint8"
    weight_type: str
    reduce_range: bool  # 7-bit weights: avoids int16 saturation in U8S8 kernels on CPUs without VNNI
    why: str


PRESETS = {
    # No VNNI: U8S8 dot products go through vpmaddubsw, whose int16 sums can saturate. optimum's avx2
    # preset uses U8U8 instead (full range, no saturation); ORT's guide offers reduce_range as the other way.
    "avx2": Preset("avx2", "quint8", "quint8", False, "AVX2 without VNNI: U8U8 avoids U8S8 int16 saturation"),
    "avx512": Preset("avx512", "quint8", "qint8", True,
                     "AVX-512 without VNNI: U8S8 with 7-bit weights (reduce_range) to avoid saturation"),
    "avx512_vnni": Preset("avx512_vnni", "quint8", "qint8", False, "VNNI accumulates U8S8 in int32: full range"),
    "avx_vnni": Preset("avx_vnni", "quint8", "qint8", False, "AVX-VNNI accumulates U8S8 in int32: full range"),
    "arm64": Preset("arm64", "quint8", "qint8", False, "ARM64 dot-product kernels: U8S8, full range"),
    # Android NNAPI's quantized FULLY_CONNECTED / BATCH_MATMUL read TENSOR_QUANT8_ASYMM (uint8) operands.
    "nnapi": Preset("nnapi", "quint8", "quint8", False, "NNAPI quantized MatMul: uint8 activations and weights (U8U8)"),
}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return set()
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def detect_preset(flags: set[str] | None = None, machine: str | None = None) -> tuple[str, str]:
    """(preset name, what was detected) for this machine."""
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64") or machine.startswith("arm"):
        return "arm64", f"machine {machine}"
    flags = cpu_flags() if flags is None else flags
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni", "cpu flags avx512f, avx512_vnni"
    if "avx_vnni" in flags:
        return "avx_vnni", "cpu flag avx_vnni"
    if "avx512f" in flags:
        return "avx512", "cpu flag avx512f without vnni"
    found = "cpu flag avx2" if "avx2" in flags else "no AVX2/AVX-512/VNNI flags found"
    return "avx2", found
