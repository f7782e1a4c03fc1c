"""Deployment targets: where the model will run decides the chain's choices, not the machine that builds it.

One frozen record per target. `optimize`, `quantize` and `package` take `target` in their configs (a
recipe's top-level `target:` fills it in every step that has one; `toolchain run --target` overrides
it) and read their choices from here; each records what it chose and why in its manifest.

What each choice follows (ONNX Runtime's quantization guide and its execution providers' op support):

- int8 format: x86 CPUs without VNNI compute U8S8 products with VPMADDUBSW, whose int16 sums can
  saturate; ORT's guide offers U8U8 or 7-bit weights (reduce_range) there. VNNI (x86) and the ARM64
  dot-product kernels accumulate U8S8 in int32: full range. NNAPI's quantized FULLY_CONNECTED takes
  uint8 activations with one weight scale per tensor (its per-channel type is for convolutions).
- fusions: ORT's transformer fusions (Attention, SkipLayerNormalization, BiasGelu, ...) are
  com.microsoft contrib ops that only ORT's CPU/GPU EPs run; NNAPI and CoreML need standard ONNX ops.
- shapes: NNAPI compiles a fixed-size graph (dynamic inputs fall back to the CPU); CoreML runs
  dynamic shapes but slower. Mobile bundles fix [1, max_length].
- .ort platform: model.ort bakes in platform-specific layout choices: phones and boards are ARM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

HOST = "host"


@dataclass(frozen=True)
class Target:
    name: str
    runs_on: str  # one line for people
    preset: str | None  # int8 preset (quantize/presets.py); None: detected from the building machine (host)
    fusions: Literal["contrib", "standard"]  # ORT transformer fusions, or standard ONNX ops only
    fixed_shapes: bool  # the bundle's model takes [1, max_length] inputs
    ort_platform: Literal["arm", "amd64"]  # what model.ort is optimized for
    providers: tuple[str, ...]  # execution providers the bundle promises, preferred first
    int8_mode: Literal["dynamic", "static"] | None = None  # the int8 the EP runs; None: either (CPU EP)
    per_channel: bool = True  # per-channel weight scales (MiniLM cosine 0.9925 vs per-tensor 0.966 on the CPU EP)
    # Quantize MatMul outputs too (complete DQ -> MatMul -> Q units): an EP only runs a QDQ unit in int8
    # when its output is quantized; the CPU EP instead runs DQ -> MatMul as MatMulIntegerToFloat (float out).
    matmul_outputs: bool = False
    readiness_ep: str | None = None  # the mobile usability check's EP this target is judged by
    # Graph rewrites `optimize` applies for standard-op targets (see toolchain/standard_ops.py).
    rewrites: tuple[str, ...] = ()
    why: dict = field(default_factory=dict)

    @property
    def mobile(self) -> bool:
        return self.readiness_ep is not None

    def choices(self, preset: str | None = None) -> dict:
        """Every choice this target makes, with its reason: what manifests, bundle.json and the report show."""
        return {"target": self.name, "runs_on": self.runs_on, "preset": preset or self.preset,
                "fusions": self.fusions, "int8_mode": self.int8_mode or "dynamic or static",
                "per_channel": self.per_channel, "fixed_shapes": self.fixed_shapes,
                "ort_platform": self.ort_platform, "providers": list(self.providers),
                "rewrites": list(self.rewrites), "why": dict(self.why)}


_CPU_WHY = {"fusions": "ORT's transformer fusions (contrib ops) run on ORT's CPU EP and make it fast",
            "fixed_shapes": "the CPU EP runs any sequence length: inputs stay dynamic"}
_MOBILE_WHY = {"fusions": "NNAPI and CoreML run standard ONNX ops only: ORT's com.microsoft fusions are not made",
               "fixed_shapes": "the EP compiles a fixed-size graph: inputs fixed to [1, max_length]",
               "ort_platform": "phones are ARM",
               "int8_mode": "static QDQ: the EP reads int8 scales from the graph; dynamic int8 "
                            "(DynamicQuantizeLinear, MatMulInteger) runs on the CPU EP only"}

TARGETS = {
    HOST: Target(HOST, "the machine that builds it (today's behaviour): int8 preset detected from its CPU",
                 None, "contrib", False, "arm", ("CPUExecutionProvider",),
                 why=_CPU_WHY | {"preset": "detected from this machine's CPU flags",
                                 "ort_platform": "model.ort for phones and boards (ARM), as before targets"}),
    "x86-avx2": Target("x86-avx2", "x86-64 CPUs with AVX2, without AVX-512 or VNNI (ORT CPU EP)", "avx2",
                       "contrib", False, "amd64", ("CPUExecutionProvider",),
                       why=_CPU_WHY | {"preset": "no VNNI: U8U8, so VPMADDUBSW's int16 sums cannot saturate",
                                       "ort_platform": "x86-64"}),
    "x86-avx512": Target("x86-avx512", "x86-64 CPUs with AVX-512, without VNNI (ORT CPU EP)", "avx512",
                         "contrib", False, "amd64", ("CPUExecutionProvider",),
                         why=_CPU_WHY | {"preset": "no VNNI: U8S8 with 7-bit weights (reduce_range) against saturation",
                                         "ort_platform": "x86-64"}),
    "x86-vnni": Target("x86-vnni", "x86-64 CPUs with AVX-512 VNNI or AVX-VNNI (ORT CPU EP)", "avx512_vnni",
                       "contrib", False, "amd64", ("CPUExecutionProvider",),
                       why=_CPU_WHY | {"preset": "VNNI accumulates U8S8 in int32: full 8-bit range",
                                       "ort_platform": "x86-64"}),
    "arm64": Target("arm64", "ARM64 phones and boards on ORT's CPU EP", "arm64", "contrib", False, "arm",
                    ("CPUExecutionProvider",),
                    why=_CPU_WHY | {"preset": "ARM64 dot-product kernels accumulate U8S8 in int32: full range",
                                    "ort_platform": "ARM64"}),
    "android-nnapi": Target(
        "android-nnapi", "Android phones through NNAPI (CPU EP for what NNAPI cannot run)", "nnapi", "standard",
        True, "arm", ("NnapiExecutionProvider", "CPUExecutionProvider"), "static", per_channel=False,
        matmul_outputs=True, readiness_ep="NNAPI", rewrites=("layernorm", "gelu", "cls-slice", "where", "expand"),
        why=_MOBILE_WHY | {"preset": "NNAPI's quantized FULLY_CONNECTED: uint8 activations and weights (U8U8)",
                           "per_channel": "NNAPI has per-channel scales for convolutions only: per-tensor weights",
                           "matmul_outputs": "NNAPI runs a MatMul in int8 only as a complete DQ -> MatMul -> Q unit",
                           "rewrites": "NNAPI has no LayerNormalization or Erf: LayerNorm becomes ReduceMean/Sub/"
                                       "Pow/Sqrt/Div, GELU its tanh form (max abs change ~5e-4); the CLS Gather "
                                       "becomes a Slice; no Where or Expand: the mask's fill becomes arithmetic, "
                                       "its broadcast a product with ones"}),
    "ios-coreml": Target(
        "ios-coreml", "iPhones and Macs through CoreML (ML Program; CPU EP for what CoreML cannot run)", "arm64",
        "standard", True, "arm", ("CoreMLExecutionProvider", "CPUExecutionProvider"), "static",
        readiness_ep="CoreML MLProgram", rewrites=("cls-slice", "expand"),
        why=_MOBILE_WHY | {"preset": "the int8 QDQ graph runs on ORT's CPU EP on the phone's ARM64 cores: U8S8, full range",
                           "rewrites": "CoreML ML Program has no Gather or Expand: the CLS token is taken with a "
                                       "Slice, the mask's broadcast is a product with ones",
                           "int8_mode": "static QDQ is made, but ORT's CoreML EP has no QuantizeLinear/"
                                        "DequantizeLinear: the bundle ships the float graph CoreML runs "
                                        "(the report recommends by EP coverage)"}),
}


def target(name: str | None) -> Target:
    """The table entry for `name` (None: host)."""
    return TARGETS[name or HOST]


def check_target(name: str) -> None:
    """For configs' __post_init__: an unknown target is a ValueError naming the known ones."""
    if name not in TARGETS:
        raise ValueError(f"target {name!r} is not one of {', '.join(TARGETS)}")
