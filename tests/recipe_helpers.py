"""Shared by the recipe tests and the subprocesses they start: a labelled CSV, a tiny recipe, and a
test-only stage that can be held mid-write so a test can kill the run there."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from toolchain.artifact import Artifact, write_artifact
from toolchain.config import config_to_dict


def write_csv(path: Path, n: int = 60) -> Path:
    """Sentences labelled negative/positive: the tiny BERT's own label names."""
    rows = [f"the film is {'good' if i % 2 else 'bad'} {i},{'positive' if i % 2 else 'negative'}" for i in range(n)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def tiny_recipe(model: Path, data: Path, extra_steps: str = "") -> str:
    """export -> evaluate -> package for a tiny model folder; `extra_steps` go between export and evaluate."""
    return f"""\
model: {model}
data: {data}
report: {{accuracy_budget: 0.05}}
quick:
  eval: {{max_eval_samples: 4}}
steps:
  - name: onnx
    stage: export
{extra_steps}  - name: eval
    stage: evaluate
    config: {{batch_size: 1}}
  - name: bundle
    stage: package
    input: recommended
    config: {{mobile_check: false, generate_tokens: 4}}
"""


@dataclass(frozen=True)
class HoldConfig:
    note: str = ""  # changes the config, nothing else


def hold(src, cfg: HoldConfig, out, *, force: bool = False) -> Artifact:
    """Copy an ONNX artifact; with HOLD_STAGE set, touch that file mid-write and wait there to be killed."""
    art = Artifact.load(src)
    with write_artifact(out, stage="hold", config=config_to_dict(cfg), format=art.format, task=art.task,
                        model_type=art.manifest.model_type, parent=art, force=force) as o:
        for name in art.manifest.files:
            shutil.copy2(art.path / name, o.folder / name)
        marker = os.environ.get("HOLD_STAGE")
        if marker:
            Path(marker).touch()
            while True:
                time.sleep(0.1)
    return Artifact.load(out)


HOLD_ENTRY = (HoldConfig, hold)
