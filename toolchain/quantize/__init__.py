"""int8 quantization with ONNX Runtime: dynamic, static QDQ, and an accuracy-aware loop.

`quantize(src, QuantizeConfig(...), out)` reads an ONNX artifact (unfused export or optimized graph,
classifier or causal LM with or without KV cache) and writes an int8 one, checked against its parent.
"""

from .stage import QuantizeConfig, quantize

__all__ = ["QuantizeConfig", "quantize"]
