"""Check that an artifact on disk is exactly what its manifest says, and optionally that it runs.

`verify` finds the checker for what `path` is (an artifact today; an edge bundle adds one line to
CHECKERS) and returns every changed, missing or extra file rather than stopping at the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .artifact import Artifact
from .errors import BadModel, CheckFailed, InputNotFound


@dataclass
class Report:
    path: str
    kind: str  # what was checked: "torch artifact", "onnx artifact", later "bundle"
    files: int  # how many files the manifest lists
    problems: list[str] = field(default_factory=list)  # changed, missing, extra files; empty when intact
    smoke: dict | None = None  # what one inference on sample text gave, when asked for


def verify(path: str | Path, smoke: bool = False) -> Report:
    """Check every file of the artifact at `path` against its manifest; `smoke` also runs it once.

    Hash problems are returned in the report; a model that does not parse or run raises (BadModel,
    UnsafeInput for external data outside the folder, CheckFailed for non-finite outputs).
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFound(f"{path} does not exist", "check the path")
    for accepts, check in CHECKERS:
        if accepts(path):
            return check(path, smoke)
    raise BadModel(f"{path} is not a toolchain artifact (no manifest.json)",
                   "pass a folder written by a toolchain stage")


def verify_artifact(path: Path, smoke: bool) -> Report:
    art = Artifact.load(path)  # a malformed manifest is an IntegrityError here
    report = Report(str(path), f"{art.format} artifact", len(art.manifest.files), art.verify())
    if report.problems or art.format != "onnx":
        return report
    from .runtime import check_onnx_file

    check_onnx_file(art.onnx_path)  # parses the graph; external data must stay inside the folder
    if smoke:
        report.smoke = smoke_onnx(art)
    return report


def smoke_onnx(art: Artifact) -> dict:
    """One ONNX Runtime call on two sample sentences: every output must come back finite."""
    from . import parity
    from .parity import empty_past
    from .modeling import ModelSource, load_tokenizer
    from .runtime import make_session

    session = make_session(art.onnx_path)
    tokenizer = load_tokenizer(ModelSource(str(art.path), str(art.path), local=True, artifact=art))
    enc = parity.tokenize(tokenizer, 2, 16)
    past = {i.name: empty_past(i, 2) for i in session.get_inputs() if i.name.startswith("past_key_values")}
    try:
        outputs = session.run(None, parity.onnx_feeds(session, enc, past))
    # onnx_feeds raises ValueError for inputs it cannot build; onnxruntime, its own Fail/InvalidArgument.
    except Exception as exc:  # noqa: BLE001
        raise BadModel(f"{art.onnx_path} loads but fails to run: {str(exc).splitlines()[0][:200]}",
                       "re-export the model") from None
    names = [o.name for o in session.get_outputs()]
    bad = [n for n, v in zip(names, outputs) if not np.isfinite(np.asarray(v, dtype=np.float64)).all()]
    if bad:
        raise CheckFailed(f"{art.onnx_path} gives non-finite values in output {bad[0]!r}", "re-export the model")
    return {"outputs": {n: list(np.shape(v)) for n, v in zip(names, outputs)}, "finite": True}


def verify_bundle(path: Path, smoke: bool) -> Report:
    """An edge bundle is checked in full: hashes, then a smoke inference of model.onnx and model.ort
    against the outputs stored at packaging time (bundles exist to be shipped, so the run is not optional)."""
    from .package import smoke_test

    art = Artifact.load(path)
    report = Report(str(path), "bundle", len(art.manifest.files), art.verify())
    if report.problems:
        return report
    result = smoke_test(path, verify_hashes=False)
    if not result["ok"]:
        raise CheckFailed(f"{path}: smoke inference failed: {result['problem']}", "rebuild the bundle; do not ship it")
    report.smoke = result
    return report


def _is_bundle(path: Path) -> bool:
    from .package import is_bundle

    return is_bundle(path)


# What verify can check: (does this path look like one?, its checker). One line per kind, most specific first.
CHECKERS: list[tuple[Callable[[Path], bool], Callable[[Path, bool], Report]]] = [
    (_is_bundle, verify_bundle),
    (Artifact.is_artifact, verify_artifact),
]
