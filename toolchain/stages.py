"""The one table of stages: name -> (config class, function). Recipes and the CLI both use it.

Every function has the shape `stage(src, cfg, out, *, force=False) -> Artifact`.
"""

from __future__ import annotations

from .distill import DistillConfig, distill
from .export import ExportConfig, export
from .finetune import FinetuneConfig, finetune
from .prune import PruneConfig, prune

STAGES = {
    "finetune": (FinetuneConfig, finetune),
    "distill": (DistillConfig, distill),
    "export": (ExportConfig, export),
    "prune": (PruneConfig, prune),
}
