"""The one table of stages: name -> (config class, function). Recipes and the CLI both use it.

Every function has the shape `stage(src, cfg, out, *, force=False) -> Artifact`.
"""

from __future__ import annotations

from .distill import DistillConfig, distill
from .export import ExportConfig, export
from .finetune import FinetuneConfig, finetune
from .prune import PruneConfig, prune
from .optimize import OptimizeConfig, optimize
from .quantize import QuantizeConfig, quantize

STAGES = {
    "finetune": (FinetuneConfig, finetune),
    "distill": (DistillConfig, distill),
    "prune": (PruneConfig, prune),
    "export": (ExportConfig, export),
    "optimize": (OptimizeConfig, optimize),
    "quantize": (QuantizeConfig, quantize),
}
