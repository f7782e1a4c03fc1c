"""toolchain: distill, prune, export, optimize, quantize, evaluate, benchmark and package transformers."""

__version__ = "0.1.0"
