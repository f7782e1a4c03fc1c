"""The one table of stages: name -> (config class, function). Recipes and the CLI both use it.

Every function has the shape `stage(src, cfg, out, *, force=False) -> Artifact`.
"""

from __future__ import annotations

from .export import ExportConfig, export
from .prune import PruneConfig, prune

STAGES = {
    "export": (ExportConfig, export),
    "prune": (PruneConfig, prune),
}
