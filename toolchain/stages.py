"""The one table of stages: name -> (config class, function). Recipes and the CLI both use it.

Every function has the shape `stage(src, cfg, out, *, force=False) -> Artifact`.
"""

from __future__ import annotations

from .export import ExportConfig, export
from .finetune import FinetuneConfig, finetune
from .optimize import OptimizeConfig, optimize
from .quantize import QuantizeConfig, quantize

STAGES = {
    "finetune": (FinetuneConfig, finetune),
    "export": (ExportConfig, export),
    "optimize": (OptimizeConfig, optimize),
    "quantize": (QuantizeConfig, quantize),
}
