"""The one table of stages: name -> (config class, function[, kind]). Recipes and the CLI both use it.

Two kinds of step share the table:

- TRANSFORM (the default): `fn(src, cfg, out, *, force=False) -> Artifact` makes a new artifact from
  `src` (a model or an earlier artifact). A recipe skips it when the lineage record of the artifact
  already at `out` holds the same config and input hash.
- MEASURE: `fn(paths: list[str], cfg) -> dict` measures existing artifacts and stores each result in
  their manifests (`Artifact.record_result`) under a key starting `<stage name>/`, with the config it ran
  under at `result["config"]`. A recipe skips it when every artifact already holds a result with that
  config. `bench(paths, cfg)` has this shape as it is.

A plain `(Config, fn)` pair is a transform, so adding a stage stays one line.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from .bench import BenchConfig, bench
from .distill import DistillConfig, distill
from .evaluate import EvaluateConfig, evaluate_artifacts
from .export import ExportConfig, export
from .finetune import FinetuneConfig, finetune
from .optimize import OptimizeConfig, optimize
from .package import PackageConfig, package
from .prune import PruneConfig, prune
from .quantize import QuantizeConfig, quantize
from .trim_vocab import TrimVocabConfig, trim_vocab

TRANSFORM = "transform"
MEASURE = "measure"


class Stage(NamedTuple):
    config: type
    fn: Callable[..., Any]
    kind: str = TRANSFORM


STAGES = {
    "finetune": (FinetuneConfig, finetune),
    "distill": (DistillConfig, distill),
    "prune": (PruneConfig, prune),
    "trim-vocab": (TrimVocabConfig, trim_vocab),
    "export": (ExportConfig, export),
    "optimize": (OptimizeConfig, optimize),
    "quantize": (QuantizeConfig, quantize),
    "package": (PackageConfig, package),
    "evaluate": (EvaluateConfig, evaluate_artifacts, MEASURE),
    "bench": (BenchConfig, bench, MEASURE),
}


def stage(name: str) -> Stage:
    """The table entry for `name` as a Stage (a two-item entry is a transform)."""
    return Stage(*STAGES[name])
