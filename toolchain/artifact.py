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
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from . import __version__
from .errors import BadModel, InputNotFound, IntegrityError, OutputExists, WriteFailed

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# A run folder's resolved recipe (toolchain/recipe.py writes it): the report reads step order and settings from it.
PLAN_FILE = "recipe.json"
PARTIAL_PREFIX = ".partial-"
MAX_MANIFEST_BYTES = 64 << 20  # hashes, lineage and results of a few hundred files are kilobytes
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
        """Parse a manifest; anything malformed is an IntegrityError, never a library exception."""
        try:
            data = json.loads(text)
        # ValueError covers integers too long to convert; RecursionError, absurdly deep nesting.
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise IntegrityError(f"{where} is not valid JSON ({_first_line(exc)})",
                                 "re-run the stage that made it") from None
        if not isinstance(data, dict):
            raise IntegrityError(f"{where} is not a JSON object", "re-run the stage that made it")
        version = data.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise IntegrityError(
                f"{where} has schema version {version!r:.40}; this toolchain reads {SCHEMA_VERSION}",
                "re-run the stage with this toolchain version",
            )
        try:
            lineage = data.pop("lineage", [])
            if not isinstance(lineage, list) or not all(isinstance(r, dict) for r in lineage):
                raise TypeError("lineage is not a list of records")
            manifest = cls(lineage=[StageRecord(**r) for r in lineage], **data)
        except TypeError as exc:
            raise IntegrityError(f"{where} is malformed ({_first_line(exc)})",
                                 "re-run the stage that made it") from None
        _check_manifest_types(manifest, where)
        return manifest


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str_dict(d: Any, values: type | tuple = object) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, values) for k, v in d.items())


def _check_manifest_types(m: Manifest, where: str) -> None:
    # Every field a later command reads is checked here, so `info` or a stage never meets a string
    # where it subtracts times, or a list where it looks up a file.
    records_ok = all(
        isinstance(r.stage, str) and _str_dict(r.config) and _str_dict(r.metrics) and _str_dict(r.versions, str)
        and (r.input_hash is None or isinstance(r.input_hash, str)) and _is_number(r.started)
        and _is_number(r.finished)
        for r in m.lineage
    )
    ok = (
        m.format in ("torch", "onnx")
        and isinstance(m.task, str)
        and isinstance(m.model_type, str)
        and _str_dict(m.files, str)
        and _str_dict(m.results)
        and records_ok
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


def _links(folder: Path) -> list[str]:
    """Symbolic links below `folder`: an artifact holds plain files only, so a link is never followed."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_symlink())


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
        if (path / MANIFEST).is_symlink():  # checked before reading: a link could make it read any file
            raise IntegrityError(f"{path / MANIFEST} is a link (an artifact holds plain files only)",
                                 "rebuild the artifact; do not use this one")
        if (path / MANIFEST).stat().st_size > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"{path / MANIFEST} is {(path / MANIFEST).stat().st_size / 1e6:.0f} MB, not a manifest",
                                 "rebuild the artifact; do not use this one")
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
    def max_length(self) -> int | None:
        """Tokens per example this model was last trained, calibrated or packaged at (its lineage), if recorded.

        A stage records the length it used in its metrics; its config holds the length asked for (None: inherited).
        """
        for record in reversed(self.manifest.lineage):
            for value in (record.metrics.get("max_length"), record.config.get("max_length")):
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
        return None

    @property
    def text_columns(self) -> tuple[str, str] | None:
        """(text column, pair column) when this model was trained on sentence pairs (NLI, paraphrase), else None:
        the latest step of its lineage that read a pair column names them."""
        for record in reversed(self.manifest.lineage):
            pair = record.config.get("pair_column")
            if isinstance(pair, str) and pair:
                return str(record.config.get("text_column") or "text"), pair
        return None

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
        links = _links(self.path)
        if links:  # a link could point anywhere: report it instead of reading through it
            return [f"link {name} (an artifact holds plain files only)" for name in links]
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
    """Replace `path` with `text` in one rename: a reader sees the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with _write_errors(path):
            tmp.write_text(text)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# errno values that mean "the output cannot be written here", not a bug in the stage.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


@contextlib.contextmanager
def _write_errors(out: Path) -> Iterator[None]:
    """Turn a failed write (disk full, file too large, read-only, no permission) into WriteFailed."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise WriteFailed(
            f"could not write {out}: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""),
            "free disk space or fix the folder's permissions, then run the same command again",
        ) from None


@dataclass
class StageOutput:
    """What a stage fills in while it runs inside `write_artifact`."""

    folder: Path
    format: Format
    task: str
    model_type: str
    record: StageRecord
    lineage: list[StageRecord]
    # Measurements taken on the staged payload (e.g. finetune's evaluation), stored with it atomically.
    results: dict[str, Any] = field(default_factory=dict)


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
    started: float | None = None,
) -> Iterator[StageOutput]:
    """Write a new artifact atomically: the stage writes into `.folder`, then it is renamed to `out`.

    Killed or failing at any point, it leaves `out` as it was (absent, or the previous artifact) and at
    most a hidden `.partial-*` folder that the next run removes. A failed write is a WriteFailed.
    `started` (time.time() when the stage began) makes the lineage time the whole stage, not only the write.

    >>> with write_artifact(out, stage="export", config={}, format="onnx", task=t, model_type="bert") as o:
    ...     write_model(o.folder); o.record.metrics["max_abs_diff"] = 1e-6   # doctest: +SKIP
    """
    out = Path(out)
    prepare_output(out, force)
    tmp = out.parent / f"{PARTIAL_PREFIX}{out.name}-{os.getpid()}"
    record = StageRecord(
        stage=stage,
        config=config,
        input_hash=parent.content_hash if parent else None,
        started=time.time() if started is None else started,
        finished=0.0,
        versions=library_versions(),
    )
    lineage = list(parent.manifest.lineage) if parent else []
    staged = StageOutput(tmp, format, task, model_type, record, lineage)
    try:
        with _write_errors(out):
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            yield staged
            staged.record.finished = time.time()
            manifest = Manifest(
                format=staged.format,
                task=staged.task,
                model_type=staged.model_type,
                files=hash_payload(tmp),
                lineage=staged.lineage + [staged.record],
                results=staged.results,
            )
            (tmp / MANIFEST).write_text(manifest.to_json())
            _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# Where a stage that recovers accuracy (prune --recover, trim-vocab --recover) keeps its changed model until
# the recovery distillation has written `out`; an interrupted run resumes from it (same input and config), so
# only the recovery is repeated.
RECOVER_SCRATCH = ".{name}.before-recovery"


def recovery_scratch(out: Path) -> Path:
    return out.parent / RECOVER_SCRATCH.format(name=out.name)


def resumable(scratch: Path, stage: str, input_hash: str | None, config: dict) -> Artifact | None:
    """The artifact an interrupted recovery left in `scratch`, if `stage` made it from this input with this
    config and its files are intact; otherwise the scratch folder is cleared and None returned."""
    from .errors import ToolchainError

    try:
        art = Artifact.load(scratch, verify=True)
        record = art.manifest.lineage[-1]
        if (record.stage == stage and record.input_hash == input_hash
                and json.dumps(record.config, sort_keys=True, default=str)
                == json.dumps(config, sort_keys=True, default=str)):
            return art
    except ToolchainError:
        pass
    shutil.rmtree(scratch, ignore_errors=True)
    return None


def check_output(out: Path, force: bool) -> None:
    """Refuse an output that holds an artifact (unless `force`) or anything else; writes nothing.

    Stages call this before their slow work, so a taken output fails in a second, not after training.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExists(f"{out} exists and is a file", "choose another output folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not Artifact.is_artifact(out):
        # --force replaces artifacts only: a typo must never empty someone's folder of other files.
        raise OutputExists(f"{out} already holds files that are not a toolchain artifact",
                           "choose another output folder (--force only replaces artifacts)")
    if not force:
        raise OutputExists(f"{out} already holds an artifact", "choose another output folder or pass --force")


def prepare_output(out: Path, force: bool) -> None:
    """check_output, then create the parent folder and clear what interrupted runs left beside `out`."""
    out = Path(out)
    check_output(out, force)
    with _write_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted(out)


def _recover_interrupted(out: Path) -> None:
    """Remove partial folders of dead runs; put back a previous artifact a killed swap left aside."""
    pattern = re.compile(rf"{re.escape(PARTIAL_PREFIX + out.name)}-(old-)?(\d+)")
    for stale in sorted(out.parent.iterdir()):
        m = pattern.fullmatch(stale.name)
        if not m or _alive(int(m.group(2))):
            continue
        if m.group(1) and not out.exists() and Artifact.is_artifact(stale):
            os.rename(stale, out)  # killed between the two renames of _replace_folder
        else:
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether another process with this id runs (its partial folder is still being written)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _replace_folder(tmp: Path, out: Path) -> None:
    """Swap `tmp` into `out`; the previous content is removed only once the new one is in place."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f"{PARTIAL_PREFIX}{out.name}-old-{os.getpid()}"
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
