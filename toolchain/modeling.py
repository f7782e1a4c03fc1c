"""Find and load Hugging Face models safely: built-in names, local folders, artifacts and hub ids.

Weights are read from safetensors. Pickle checkpoints (`pytorch_model.bin`) are refused unless
the caller allows them, and then read with `weights_only=True`; remote code runs only when the
caller asks for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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
    # Passed explicitly (never None) so transformers can neither run a folder's code nor prompt for it.
    trust_remote_code: bool = False

    @property
    def config(self):
        from transformers import AutoConfig

        if self.local and not (Path(self.location) / "config.json").is_file():
            raise BadModel(f"{self.spec} has no config.json", "save the model (and its config) with save_pretrained")
        try:
            with quiet_transformers():
                return AutoConfig.from_pretrained(self.location, trust_remote_code=self.trust_remote_code)
        except OSError as exc:
            raise _load_error(self, exc) from None
        except (ValueError, KeyError) as exc:
            _raise_if_remote_code(self, exc)
            raise BadModel(f"{self.spec}: config.json is not usable: {_first_line(exc)}", "re-save the model") from None


def resolve_model(spec: str | Path, *, trust_remote_code: bool = False) -> ModelSource:
    """Turn what the user typed into a model location, or a clear error; an artifact's hashes are checked."""
    spec = str(spec)
    if spec in assets.BUILTIN_MODELS:
        return ModelSource(spec, str(assets.model_folder(spec)), local=True, trust_remote_code=trust_remote_code)
    path = Path(spec).expanduser()
    if path.exists():
        return _local_source(spec, path, trust_remote_code)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise InputNotFound(f"{spec} does not exist", "check the path")
    return ModelSource(spec, spec, local=False, trust_remote_code=trust_remote_code)


def _local_source(spec: str, path: Path, trust_remote_code: bool = False) -> ModelSource:
    if not path.is_dir():
        raise BadModel(f"{path} is a file, not a model folder", "pass the folder that holds config.json")
    if Artifact.is_artifact(path):
        # A stage records its input's hash in the lineage: that record means something only if checked.
        art = Artifact.load(path, verify=True)
        if art.format != "torch":
            raise Unsupported(
                f"{path} is an ONNX artifact; this step needs a PyTorch model",
                "pass the torch artifact or model folder it was exported from",
            )
        return ModelSource(spec, str(path), local=True, artifact=art, trust_remote_code=trust_remote_code)
    if not (path / "config.json").is_file():
        what = "is empty" if not any(path.iterdir()) else "has no config.json"
        raise BadModel(
            f"{path} {what}: it is not a Hugging Face model folder",
            "pass a folder saved with save_pretrained, a built-in name (minilm, smollm2-135m) or a hub id",
        )
    return ModelSource(spec, str(path), local=True, trust_remote_code=trust_remote_code)


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
        _check_pickles(folder)
        return {"use_safetensors": False}  # transformers reads them with torch.load(weights_only=True)
    raise BadModel(f"{folder} has a config.json but no weights file", "save the model with save_pretrained")


def _check_pickles(folder: Path) -> None:
    """Open each pickle checkpoint with torch's weights-only unpickler first, to name what it refused.

    transformers reports a refused pickle as "unable to load weights" (a corrupt file); a pickle that
    asks for a function such as os.system is hostile, and says so here. Nothing in it is executed.
    """
    import pickle

    import torch

    weights = sorted(folder.glob("pytorch_model*.bin")) + [folder / n for n in PICKLE_WEIGHTS[2:]]
    for path in (p for p in weights if p.is_file()):
        try:
            torch.load(path, map_location="meta", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "Weights only load failed" not in str(exc):
                raise BadModel(f"{path} is not a readable checkpoint: {_first_line(exc)}",
                               "re-save the model") from None
            found = re.search(r"GLOBAL (\S+)", str(exc))
            what = f"it calls {found.group(1)}" if found else "it holds objects that are not tensors"
            raise UnsafeInput(f"{path} would run code when unpickled ({what}); it was not loaded",
                              "do not use this file; get the model as safetensors from a source you trust") from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise BadModel(f"{path} is not a readable checkpoint: {_first_line(exc)}", "re-save the model") from None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' logger: its warnings would bury the one line this toolchain prints."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_model(src: ModelSource, task: str, *, trust_remote_code: bool = False, allow_pickle: bool = False,
               new_head: bool = False, **overrides):
    """Load the PyTorch model for `task` in eval mode; weights that disagree with the config are errors.

    Only the task head may be missing or of another shape (then it is newly initialized: expected with
    `new_head`, e.g. finetune's head for new labels, and a warning otherwise). `overrides` go to
    `from_pretrained` (e.g. num_labels, id2label).
    """
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = {
        "text-classification": AutoModelForSequenceClassification,
        "text-generation": AutoModelForCausalLM,
        "feature-extraction": AutoModel,
    }[check_task(task)]
    kwargs = _weights_kwargs(src, allow_pickle)
    if src.local:
        check_config_fits_weights(src)  # before anything is allocated: config.json could claim any size
    if src.local and _recorded_shapes(Path(src.location)):
        return _load_reshaped(src, cls, task, kwargs["use_safetensors"], overrides).eval()
    # Shapes are checked below, key by key, so the head may differ while the body may not.
    overrides |= {"ignore_mismatched_sizes": True, "output_loading_info": True}
    try:
        with quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = cls.from_pretrained(src.location, trust_remote_code=trust_remote_code, **kwargs, **overrides)
    except OSError as exc:
        raise _load_error(src, exc) from None
    except SafetensorError as exc:
        raise BadModel(f"{src.spec}: the safetensors weights are corrupt or truncated ({_first_line(exc)})",
                       "download or save the model again") from None
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        _raise_if_remote_code(src, exc)
        raise BadModel(f"{src.spec} could not be loaded as {task}: {_first_line(exc)}", _shape_fix(exc)) from None
    _check_loaded(src, model, info, task, new_head)
    return model.eval()


# Sizes in config.json that a weight of the model has as a dimension (positions are not: RoPE models store none).
SIZE_FIELDS = ("hidden_size", "n_embd", "d_model", "intermediate_size", "n_inner", "vocab_size")
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")
LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


def check_config_fits_weights(src: ModelSource) -> None:
    """Refuse a config.json whose layer count or sizes the safetensors weights cannot hold, reading only the
    weights' headers: a config claiming 200,000 layers would otherwise be allocated (minutes, then no memory)."""
    folder = Path(src.location)
    try:
        config = read_config_json(folder)
    except (OSError, ValueError, RecursionError):
        return  # from_pretrained reports an unreadable config with its own error
    shapes = safetensors_shapes(folder)
    if not isinstance(config, dict) or not shapes:
        return
    fix = "the weights do not match config.json: re-save the model with save_pretrained"
    layers = {int(m.group(1)) for name in shapes if (m := LAYER_INDEX.search(name))}
    claimed = next((config[k] for k in LAYER_FIELDS if type(config.get(k)) is int), None)
    if layers and claimed is not None and not 0 <= claimed <= max(layers) + 1:
        raise BadModel(f"{src.spec}: config.json gives {claimed} layers; the weights hold {max(layers) + 1}", fix)
    largest = max((d for shape in shapes.values() for d in shape), default=0)
    for key in SIZE_FIELDS:
        value = config.get(key)
        if type(value) is int and not 0 < value <= largest:
            raise BadModel(f"{src.spec}: config.json gives {key} {value}; no weight has that size "
                           f"(the largest dimension is {largest})", fix)


def safetensors_shapes(folder: Path) -> dict[str, list[int]] | None:
    """{tensor name: shape} from the headers of a folder's safetensors files; None when unreadable or absent."""
    files = [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if not files[0].is_file() and index.is_file():
        try:
            names = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        files = [folder / n for n in sorted(names) if isinstance(n, str) and Path(n).name == n]
    shapes: dict[str, list[int]] = {}
    for path in files:
        header = _safetensors_header(path)
        if header is None:
            return None
        shapes |= {k: v["shape"] for k, v in header.items()
                   if isinstance(v, dict) and isinstance(v.get("shape"), list)
                   and all(type(d) is int for d in v["shape"])}
    return shapes


def _safetensors_header(path: Path) -> dict | None:
    """The JSON header of a safetensors file (8 bytes of length, then the header); None when unreadable."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= 100 << 20 or size > path.stat().st_size - 8:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def _check_loaded(src: ModelSource, model, info: dict, task: str, new_head: bool) -> None:
    """Refuse weights that left part of the model's body random; report a newly initialized head."""
    prefix = model.base_model_prefix + "."
    has_head = model.base_model is not model

    def in_head(key: str) -> bool:
        return has_head and not key.startswith(prefix)

    state = model.state_dict()
    for key in info["mismatched_keys"] + info["missing_keys"]:
        if not in_head(key):
            how = (f"has another shape than config.json gives it ({list(state[key].shape)})"
                   if key in info["mismatched_keys"] and key in state else "is missing from the weights")
            raise BadModel(f"{src.spec}: weight {key} {how}",
                           "the weights do not match config.json: re-save the model with save_pretrained")
    if info["mismatched_keys"] + info["missing_keys"] and not new_head:
        warnings.warn(f"{src.spec}: the {task} head is newly initialized; fine-tune before shipping")


def _recorded_shapes(folder: Path) -> dict | None:
    """Per-layer sizes that a structurally pruned model records in its config.json, if any."""
    from .prune.families import SHAPES_FIELD

    try:
        return read_config_json(folder).get(SHAPES_FIELD)
    except (OSError, ValueError, AttributeError):
        return None  # from_pretrained reports an unreadable config with its own error


def _load_reshaped(src: ModelSource, cls, task: str, safetensors: bool, overrides: dict):
    """Load a pruned folder: build the model from its config, shrink each layer to the recorded
    sizes, then load the weights; transformers alone would refuse shapes that differ per layer."""
    from transformers import AutoConfig

    from .prune.families import SHAPES_FIELD, apply_shapes

    src.config  # noqa: B018  raises the toolchain's error for an unreadable config
    config = AutoConfig.from_pretrained(src.location, **overrides)
    state = _read_weights(Path(src.location), safetensors)
    model = cls.from_config(config)
    apply_shapes(model, getattr(config, SHAPES_FIELD))
    state = _match_prefix(model, state)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise BadModel(f"{src.spec}: the weights do not fit the sizes in config.json ({_first_line(exc)[:200]})",
                       "re-run toolchain prune; do not edit a pruned config by hand") from None
    tied = set(getattr(model, "_tied_weights_keys", None) or []) if config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in tied]
    prefix = f"{model.base_model_prefix}."
    has_head = any(k.startswith(prefix) for k in model.state_dict())
    if unexpected or any(k.startswith(prefix) or not has_head for k in missing):
        raise BadModel(f"{src.spec}: weights and model disagree (missing {missing[:3]}, unexpected {unexpected[:3]})",
                       "re-run toolchain prune to rewrite the model folder")
    if missing:
        warnings.warn(f"{src.spec}: the {task} head is newly initialized; fine-tune before shipping")
    model.tie_weights()
    return model


def _read_weights(folder: Path, safetensors: bool) -> dict:
    import torch
    from safetensors.torch import load_file

    if not safetensors:  # allowed by the caller; still never unpickle arbitrary objects
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    shards = sorted(set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values()))
    if any(Path(s).name != s for s in shards):
        raise UnsafeInput(f"{folder}: the weight index names files outside the folder", "do not load this model")
    return {k: v for s in shards for k, v in load_file(folder / s).items()}


def _match_prefix(model, state: dict) -> dict:
    """Add or strip the base-model prefix ('bert.'), as from_pretrained does between head and base models."""
    prefix = f"{model.base_model_prefix}."
    has = any(k.startswith(prefix) for k in state)
    wants = any(k.startswith(prefix) for k in model.state_dict())
    if has and not wants:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if wants and not has:
        return {prefix + k: v for k, v in state.items()}
    return state


# Any of these is a tokenizer a folder can be loaded with (fast, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def load_tokenizer(src: ModelSource, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    if src.local and not any((Path(src.location) / name).is_file() for name in TOKENIZER_FILES):
        # transformers would name its own internals (a None vocab file, a missing attribute) instead
        raise BadModel(f"{src.spec} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)})",
                       "save the tokenizer beside the model (tokenizer.save_pretrained)")
    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(src.location, trust_remote_code=trust_remote_code)
    # The tokenizers library raises a bare Exception for a corrupt tokenizer.json.
    except Exception as exc:  # noqa: BLE001
        _raise_if_remote_code(src, exc)
        raise BadModel(f"{src.spec} has no usable tokenizer: {_first_line(exc)}",
                       "save the tokenizer beside the model (tokenizer.save_pretrained)") from None
    if tok.pad_token is None:
        # Decoder-only tokenizers ship without a pad token; padding positions are masked anyway.
        tok.pad_token = tok.eos_token
    return tok


# A slow tokenizer's vocabulary files: one line (or entry) per id, so they cannot hold trim-vocab's aliases.
SLOW_TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt")


def aliased_tokenizer_json(path: Path) -> bool:
    """Whether a tokenizer.json maps several strings to one id (trim-vocab --alias)."""
    if not path.is_file():
        return False
    try:
        vocab = json.loads(path.read_text(encoding="utf-8")).get("model", {}).get("vocab")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(vocab, dict) and len(set(vocab.values())) < len(vocab)


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """tokenizer.save_pretrained, except that an aliased tokenizer.json (the folder the tokenizer was loaded from)
    is copied byte for byte: `tokenizers` writes one string per id, so a re-save would drop every alias and split
    text differently. Nor are the slow tokenizer's files written beside it (SLOW_TOKENIZER_FILES)."""
    tokenizer.save_pretrained(folder)
    src, dst = Path(tokenizer.name_or_path) / "tokenizer.json", Path(folder) / "tokenizer.json"
    if aliased_tokenizer_json(src) and src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
        for stale in SLOW_TOKENIZER_FILES:
            (Path(folder) / stale).unlink(missing_ok=True)


def _raise_if_remote_code(src: ModelSource, exc: Exception) -> None:
    if "trust_remote_code" in str(exc) or "custom code" in str(exc):
        raise UnsafeInput(f"{src.spec} needs custom code from its folder or repository to load",
                          "read that code, then pass --trust-remote-code if you trust it") from None


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


def model_inputs(model, batch: dict) -> dict:
    """The input tensors a model's forward accepts (Llama takes no token_type_ids)."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch and k in accepted}
