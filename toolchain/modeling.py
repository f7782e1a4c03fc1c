"""Find and load Hugging Face models safely: built-in names, local folders, artifacts and hub ids.

Weights are read from safetensors. Pickle checkpoints (`pytorch_model.bin`) are refused unless
the caller allows them, and then read with `weights_only=True`; remote code runs only when the
caller asks for it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import assets
from .artifact import TASKS, Artifact, hash_payload
from .errors import BadModel, InputNotFound, Unsupported, UnsafeInput

PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a local folder (built-in, artifact or user's) or a hub id."""

    spec: str
    location: str  # folder path or hub id
    local: bool
    artifact: Artifact | None = None

    @property
    def config(self):
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(self.location)
        except OSError as exc:
            raise _load_error(self, exc) from None
        except ValueError as exc:
            raise BadModel(f"{self.spec}: config.json is not usable: {_first_line(exc)}", "re-save the model") from None


def resolve_model(spec: str | Path) -> ModelSource:
    """Turn what the user typed into a model location, or a clear error."""
    spec = str(spec)
    if spec in assets.BUILTIN_MODELS:
        return ModelSource(spec, str(assets.model_folder(spec)), local=True)
    path = Path(spec).expanduser()
    if path.exists():
        return _local_source(spec, path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise InputNotFound(f"{spec} does not exist", "check the path")
    return ModelSource(spec, spec, local=False)


def _local_source(spec: str, path: Path) -> ModelSource:
    if not path.is_dir():
        raise BadModel(f"{path} is a file, not a model folder", "pass the folder that holds config.json")
    if Artifact.is_artifact(path):
        art = Artifact.load(path)
        if art.format != "torch":
            raise Unsupported(
                f"{path} is an ONNX artifact; this step needs a PyTorch model",
                "pass the torch artifact or model folder it was exported from",
            )
        return ModelSource(spec, str(path), local=True, artifact=art)
    if not (path / "config.json").is_file():
        what = "is empty" if not any(path.iterdir()) else "has no config.json"
        raise BadModel(
            f"{path} {what}: it is not a Hugging Face model folder",
            "pass a folder saved with save_pretrained, a built-in name (minilm, smollm2-135m) or a hub id",
        )
    return ModelSource(spec, str(path), local=True)


def source_hash(source: ModelSource) -> str | None:
    """A content hash of a model: the artifact's, or one over a local folder's files; None for hub ids."""
    if source.artifact is not None:
        return source.artifact.content_hash
    if not source.local:
        return None
    return hashlib.sha256(json.dumps(hash_payload(Path(source.location)), sort_keys=True).encode()).hexdigest()


def infer_task(config) -> str:
    """The task a config's architecture was saved for."""
    arch = " ".join(getattr(config, "architectures", None) or [])
    if "SequenceClassification" in arch:
        return "text-classification"
    if "CausalLM" in arch or "LMHeadModel" in arch:
        return "text-generation"
    if config.model_type in ("gpt2", "llama", "mistral", "qwen2", "phi3", "gemma"):
        return "text-generation"
    return "feature-extraction"


def check_task(task: str) -> str:
    if task not in TASKS:
        raise Unsupported(f"unsupported task {task!r}", f"use one of: {', '.join(TASKS)}")
    return task


def _weights_kwargs(src: ModelSource, allow_pickle: bool) -> dict:
    if not src.local:
        return {"use_safetensors": None if allow_pickle else True}
    folder = Path(src.location)
    if any((folder / n).is_file() for n in SAFE_WEIGHTS):
        return {"use_safetensors": True}
    if any((folder / n).is_file() for n in PICKLE_WEIGHTS):
        if not allow_pickle:
            raise UnsafeInput(
                f"{folder} holds only pickle weights, which can run code when loaded",
                "convert them to safetensors, or pass --allow-pickle if you trust the source",
            )
        return {"use_safetensors": False}  # transformers reads them with torch.load(weights_only=True)
    raise BadModel(f"{folder} has a config.json but no weights file", "save the model with save_pretrained")


def load_model(src: ModelSource, task: str, *, trust_remote_code: bool = False, allow_pickle: bool = False,
               **overrides):
    """Load the PyTorch model for `task` in eval mode; shapes that disagree with the config are errors.

    `overrides` go to `from_pretrained` (e.g. num_labels, id2label for a new classification head).
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = {
        "text-classification": AutoModelForSequenceClassification,
        "text-generation": AutoModelForCausalLM,
        "feature-extraction": AutoModel,
    }[check_task(task)]
    kwargs = _weights_kwargs(src, allow_pickle)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = cls.from_pretrained(src.location, trust_remote_code=trust_remote_code, **kwargs, **overrides)
        except OSError as exc:
            raise _load_error(src, exc) from None
        except (ValueError, RuntimeError, KeyError) as exc:
            if "trust_remote_code" in str(exc):
                raise UnsafeInput(
                    f"{src.spec} needs custom code from its repository to load",
                    "read that code, then pass --trust-remote-code",
                ) from None
            raise BadModel(f"{src.spec} could not be loaded as {task}: {_first_line(exc)}", _shape_fix(exc)) from None
    for w in caught:
        if "newly initialized" in str(w.message):
            warnings.warn(f"{src.spec}: the {task} head is newly initialized; fine-tune before shipping")
    return model.eval()


def load_tokenizer(src: ModelSource, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src.location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise BadModel(f"{src.spec} has no usable tokenizer: {_first_line(exc)}", "save the tokenizer beside the model") from None
    if tok.pad_token is None:
        # Decoder-only tokenizers ship without a pad token; padding positions are masked anyway.
        tok.pad_token = tok.eos_token
    return tok


def _load_error(src: ModelSource, exc: Exception):
    if not src.local:
        return InputNotFound(
            f"{src.spec!r} is not a built-in model ({', '.join(assets.BUILTIN_MODELS)}), a local folder, "
            "or a hub id that could be reached",
            "check the name, or download the model where you have internet and pass its folder",
        )
    return BadModel(f"{src.spec} could not be loaded: {_first_line(exc)}", "check the folder's files")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _shape_fix(exc: Exception) -> str:
    if "size mismatch" in str(exc) or "shape" in str(exc):
        return "the weights do not match config.json: re-save the model with save_pretrained"
    return "check that the folder holds a complete model of this task"


def read_config_json(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())
