"""Artifacts: a folder of payload files plus `manifest.json` saying what it is and how it was made.

The manifest records the format (`torch`: a Hugging Face model folder, `onnx`: `model.onnx` with
tokenizer and config), the task, a lineage record per stage and a sha256 per payload file. A
stage writes into a hidden temporary folder beside the target and renames it into place only
after the manifest is written, so a failed or interrupted stage never leaves a folder that looks
finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from . import __version__
from .errors import BadModel, InputNotFound, IntegrityError, OutputExists

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PARTIAL_PREFIX = ".partial-"
Format = Literal["torch", "onnx"]
TASKS = ("text-classification", "text-generation", "feature-extraction")


@dataclass
class StageRecord:
    """How one stage made this artifact: enough to reproduce and audit it."""

    stage: str
    config: dict[str, Any]
    input_hash: str | None
    started: float
    finished: float
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class Manifest:
    format: Format
    task: str
    model_type: str
    files: dict[str, str]
    lineage: list[StageRecord] = field(default_factory=list)
    # Measurements made after the artifact was written (evaluate, bench), keyed by what was measured.
    results: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST) -> "Manifest":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"{where} is not valid JSON ({exc})", "re-run the stage that made it") from None
        if not isinstance(data, dict):
            raise IntegrityError(f"{where} is not a JSON object", "re-run the stage that made it")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise IntegrityError(
                f"{where} has schema version {version!r}; this toolchain reads {SCHEMA_VERSION}",
                "re-run the stage with this toolchain version",
            )
        try:
            lineage = [StageRecord(**r) for r in data.pop("lineage", [])]
            manifest = cls(lineage=lineage, **data)
        except TypeError as exc:
            raise IntegrityError(f"{where} is malformed ({exc})", "re-run the stage that made it") from None
        _check_manifest_types(manifest, where)
        return manifest


def _check_manifest_types(m: Manifest, where: str) -> None:
    ok = (
        m.format in ("torch", "onnx")
        and isinstance(m.task, str)
        and isinstance(m.model_type, str)
        and isinstance(m.files, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in m.files.items())
        and isinstance(m.results, dict)
        and all(isinstance(r.stage, str) and isinstance(r.config, dict) for r in m.lineage)
    )
    if not ok:
        raise IntegrityError(f"{where} has fields of the wrong type", "re-run the stage that made it")
    for name in m.files:
        _check_relative(name, where)


def _check_relative(name: str, where: str) -> None:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts:
        raise IntegrityError(f"{where} names a file outside its folder: {name!r}", "do not use this artifact")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_payload(folder: Path) -> dict[str, str]:
    """sha256 of every file below `folder` except the manifest, keyed by relative POSIX path."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"toolchain": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


@dataclass
class Artifact:
    path: Path
    manifest: Manifest

    @classmethod
    def load(cls, path: str | Path, verify: bool = False) -> "Artifact":
        """Open an artifact folder; with `verify`, check every file against its hash."""
        path = Path(path)
        if not path.exists():
            raise InputNotFound(f"{path} does not exist", "check the path")
        if not (path / MANIFEST).is_file():
            raise BadModel(
                f"{path} is not a toolchain artifact (no {MANIFEST})",
                "pass a folder written by a toolchain stage, or export the model first",
            )
        manifest = Manifest.from_json((path / MANIFEST).read_text(errors="replace"), str(path / MANIFEST))
        art = cls(path, manifest)
        if verify:
            problems = art.verify()
            if problems:
                raise IntegrityError(f"{path}: {problems[0]}", "rebuild the artifact; do not ship it")
        return art

    @staticmethod
    def is_artifact(path: Path) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @property
    def format(self) -> Format:
        return self.manifest.format

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def content_hash(self) -> str:
        """One sha256 over the payload hashes: what a later stage records as its input."""
        blob = json.dumps(self.manifest.files, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def size_bytes(self, pattern: str = "*") -> int:
        return sum(p.stat().st_size for p in self.path.glob(pattern) if p.is_file() and p.name != MANIFEST)

    def verify(self) -> list[str]:
        """Each file that changed, went missing or appeared since the manifest was written."""
        actual = hash_payload(self.path)
        problems = []
        for name, digest in self.manifest.files.items():
            if name not in actual:
                problems.append(f"missing file {name}")
            elif actual[name] != digest:
                problems.append(f"changed file {name} (sha256 {actual[name][:12]}, expected {digest[:12]})")
        problems += [f"extra file {name}" for name in actual if name not in self.manifest.files]
        return problems

    def record_result(self, key: str, value: Any) -> None:
        """Store a measurement (evaluation, benchmark) in the manifest; the payload is untouched."""
        self.manifest.results[key] = value
        atomic_write_text(self.path / MANIFEST, self.manifest.to_json())


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class StageOutput:
    """What a stage fills in while it runs inside `write_artifact`."""

    folder: Path
    format: Format
    task: str
    model_type: str
    record: StageRecord
    lineage: list[StageRecord]


@contextlib.contextmanager
def write_artifact(
    out: str | Path,
    *,
    stage: str,
    config: dict[str, Any],
    format: Format,
    task: str,
    model_type: str,
    parent: Artifact | None = None,
    force: bool = False,
) -> Iterator[StageOutput]:
    """Write a new artifact atomically: the stage writes into `.folder`, then it is renamed to `out`.

    >>> with write_artifact(out, stage="export", config={}, format="onnx", task=t, model_type="bert") as o:
    ...     write_model(o.folder); o.record.metrics["max_abs_diff"] = 1e-6   # doctest: +SKIP
    """
    out = Path(out)
    prepare_output(out, force)
    tmp = out.parent / f"{PARTIAL_PREFIX}{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    record = StageRecord(
        stage=stage,
        config=config,
        input_hash=parent.content_hash if parent else None,
        started=time.time(),
        finished=0.0,
        versions=library_versions(),
    )
    lineage = list(parent.manifest.lineage) if parent else []
    staged = StageOutput(tmp, format, task, model_type, record, lineage)
    try:
        yield staged
        staged.record.finished = time.time()
        manifest = Manifest(
            format=staged.format,
            task=staged.task,
            model_type=staged.model_type,
            files=hash_payload(tmp),
            lineage=staged.lineage + [staged.record],
        )
        (tmp / MANIFEST).write_text(manifest.to_json())
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prepare_output(out: Path, force: bool) -> None:
    """Refuse to overwrite an existing artifact or a non-empty folder unless `force`."""
    if out.exists() and not out.is_dir():
        raise OutputExists(f"{out} exists and is a file", "choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        what = "an artifact" if Artifact.is_artifact(out) else "files"
        raise OutputExists(f"{out} already holds {what}", "choose another output folder or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f"{PARTIAL_PREFIX}{out.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted run


def _replace_folder(tmp: Path, out: Path) -> None:
    """Swap `tmp` into `out`; the previous content is removed only once the new one is in place."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f"{PARTIAL_PREFIX}{out.name}-old-{os.getpid()}"
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
