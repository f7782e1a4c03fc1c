"""What is benchmarked: the targets (torch or ONNX models) and the token batches they are fed.

Inputs are tokenized here, in the orchestrating process, with the `tokenizers` library (no torch),
and sent to the workers as token ids, so every artifact that shares a tokenizer is timed on
exactly the same batches.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..artifact import Artifact
from ..errors import BadModel, DataError, InputNotFound, Unsupported
from ..modeling import infer_task, resolve_model
from ..parity import SAMPLE_TEXTS

# ONNX ops that mean the graph computes its matrix products in int8.
INT8_OPS = {"MatMulInteger", "QLinearMatMul", "DynamicQuantizeLinear", "MatMulIntegerToFloat",
            "DynamicQuantizeMatMul", "QLinearConv", "QAttention", "QuantizeLinear", "MatMulNBits"}
SAFETENSORS_DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "I8": "int8"}


@dataclass
class Target:
    """One model to time: a torch folder (artifact or plain Hugging Face folder) or an ONNX artifact."""

    label: str
    path: Path
    format: str  # "torch" or "onnx"
    task: str
    config: dict  # its config.json: the FLOP formulas read it
    artifact: Artifact | None  # None for a plain model folder: results are printed but not stored
    file_bytes: int  # weights only (model.onnx and external data, or safetensors), not tokenizer files
    precision: str  # fp32 / fp16 / bf16 / int8: which measured peak it is held against
    with_past: bool = False  # an ONNX causal LM exported with its KV cache as inputs and outputs
    onnx_inputs: list[str] = field(default_factory=list)
    torch_quantize: str | None = None  # "dynamic-int8": the worker applies torch.ao dynamic int8 after loading


def torch_dynamic_int8_target(target: Target) -> Target:
    """The same torch model timed through torch.ao dynamic int8 (Linear layers int8): a PyTorch user's int8.

    Its file size is the quantized state_dict's, which the worker reports once it has quantized. Its
    results are not stored in the fp32 artifact's manifest (artifact None): that manifest describes other weights.
    """
    if target.format != "torch":
        raise Unsupported(f"{target.path} is an ONNX model: torch dynamic int8 applies to PyTorch models",
                          "pass the PyTorch model folder it was exported from")
    return replace(target, label=f"{target.label}+torch-int8", precision="int8", torch_quantize="dynamic-int8",
                   artifact=None)


def resolve_target(spec: str) -> Target:
    """A target from what the user typed: an artifact folder, a model folder or a built-in name."""
    path = Path(spec).expanduser()
    artifact = Artifact.load(path) if Artifact.is_artifact(path) else None
    if artifact is None and (path / "model.onnx").is_file():
        raise BadModel(f"{path} holds model.onnx but no manifest.json", "benchmark the artifact written by `export`")
    if artifact is None or artifact.format == "torch":
        source = resolve_model(spec)
        if not source.local:
            raise InputNotFound(f"{spec} is not a local model or artifact", "download the model and pass its folder")
        path = Path(source.location)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise BadModel(f"{path} has no config.json", "benchmark a folder written by save_pretrained or a stage")
    config = json.loads(config_file.read_text())
    task = artifact.task if artifact else infer_task(SimpleNamespace(**{"architectures": None} | config))
    fmt = artifact.format if artifact else "torch"
    target = Target(_label(spec, path), path, fmt, task, config, artifact, 0, "fp32")
    if fmt == "onnx":
        _describe_onnx(target)
    else:
        _describe_torch(target)
    return target


def _label(spec: str, path: Path) -> str:
    return spec if not Path(spec).expanduser().exists() else path.name


def unique_labels(targets: list[Target]) -> None:
    """Make labels distinct (parent/name) where two folders share a name."""
    names = [t.label for t in targets]
    for t in targets:
        if names.count(t.label) > 1:
            t.label = f"{t.path.parent.name}/{t.path.name}"


def _describe_onnx(t: Target) -> None:
    from ..runtime import check_onnx_file, onnx_file_bytes

    model = check_onnx_file(t.path / "model.onnx")
    t.onnx_inputs = [i.name for i in model.graph.input]
    t.with_past = any(n.startswith("past_key_values") for n in t.onnx_inputs)
    ops = {n.op_type for n in model.graph.node}
    fp16 = any(i.data_type == 10 for i in model.graph.initializer)  # TensorProto.FLOAT16
    t.precision = "int8" if ops & INT8_OPS else "fp16" if fp16 else "fp32"
    t.file_bytes = onnx_file_bytes(t.path / "model.onnx", model)


def _describe_torch(t: Target) -> None:
    weights = sorted(t.path.glob("*.safetensors")) or sorted(t.path.glob("pytorch_model*.bin"))
    if not weights:
        raise BadModel(f"{t.path} has no weights file", "save the model with save_pretrained")
    t.file_bytes = sum(w.stat().st_size for w in weights)
    t.precision = _safetensors_precision(weights[0]) if weights[0].suffix == ".safetensors" else "fp32"
    if t.task not in ("text-classification", "feature-extraction", "text-generation"):
        raise Unsupported(f"{t.path}: task {t.task} cannot be benchmarked", "pass a classifier, encoder or causal LM")


def _safetensors_precision(path: Path) -> str:
    """The dtype holding most weight elements, read from the safetensors header (no torch needed)."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
    counts: dict[str, int] = {}
    for name, meta in header.items():
        if name != "__metadata__":
            counts[meta["dtype"]] = counts.get(meta["dtype"], 0) + math.prod(meta["shape"])
    return SAFETENSORS_DTYPES.get(max(counts, key=counts.get), "fp32") if counts else "fp32"


@dataclass
class Workload:
    """The token batches of one configuration: a fixed sequence length, or real text padded per batch."""

    name: str  # "seq=64" or "data=rotten-tomatoes": how the manifest key and the table name it
    batch: int
    seq: int | None  # None when lengths come from data
    batches: list[dict[str, list[list[int]]]]  # input_ids and attention_mask, padded per batch

    @property
    def padded_lengths(self) -> list[int]:
        return [len(b["input_ids"][0]) for b in self.batches]

    @property
    def items(self) -> list[int]:
        return [len(b["input_ids"]) for b in self.batches]

    @property
    def real_tokens(self) -> list[int]:
        return [int(np.sum(b["attention_mask"])) for b in self.batches]


class TokenizerJson:
    """A fast tokenizer read from tokenizer.json with `tokenizers` alone (transformers would import torch)."""

    def __init__(self, folder: Path, left_pad: bool):
        from tokenizers import Tokenizer

        file = folder / "tokenizer.json"
        if not file.is_file():
            raise BadModel(f"{folder} has no tokenizer.json", "save a fast tokenizer beside the model")
        self.tok = Tokenizer.from_file(str(file))
        self.tok.no_padding()
        self.tok.no_truncation()
        self.pad_id = self._pad_id(folder)
        self.left_pad = left_pad

    def _pad_id(self, folder: Path) -> int:
        cfg_file = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        for key in ("pad_token", "eos_token"):
            token = cfg.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            if token and self.tok.token_to_id(token) is not None:
                return self.tok.token_to_id(token)
        return 0

    def encode(self, texts: list, max_length: int) -> list[list[int]]:
        """Token ids of each text (or (text, pair) tuple: both segments, as the model reads them), cut to max_length."""
        return [e.ids[:max_length] for e in self.tok.encode_batch(texts)]

    def pad(self, rows: list[list[int]], length: int | None = None) -> dict[str, list[list[int]]]:
        """Pad to the longest row (dynamic padding) or to `length`; left for causal LMs, as generation pads."""
        length = length or max(len(r) for r in rows)
        ids, mask = [], []
        for r in rows:
            fill = [self.pad_id] * (length - len(r))
            ids.append(fill + r if self.left_pad else r + fill)
            ones, zeros = [1] * len(r), [0] * len(fill)
            mask.append(zeros + ones if self.left_pad else ones + zeros)
        return {"input_ids": ids, "attention_mask": mask}


def synthetic_workload(tok: TokenizerJson, batch: int, seq: int) -> Workload:
    """`batch` rows of exactly `seq` real tokens (sample sentences repeated), no padding."""
    text = " ".join(SAMPLE_TEXTS * (1 + seq // 8))
    rows = []
    for i in range(batch):
        rotated = " ".join(SAMPLE_TEXTS[i % len(SAMPLE_TEXTS):]) + " " + text
        rows.append(tok.encode([rotated], seq)[0])
    return Workload(f"seq={seq}", batch, seq, [tok.pad(rows, seq)])


def data_workload(tok: TokenizerJson, texts: list[str], name: str, batch: int, max_length: int, n_batches: int) -> Workload:
    """Consecutive batches of real texts, each padded to its own longest row (dynamic padding)."""
    n = min(n_batches, math.ceil(len(texts) / batch))
    encoded = tok.encode(texts[: n * batch], max_length)
    batches = [tok.pad(encoded[i:i + batch]) for i in range(0, len(encoded), batch)]
    return Workload(f"data={name}", batch, None, batches)


def data_texts(cfg) -> list:
    """Texts of a dataset's test split (classification data; (text, pair) tuples for sentence-pair data, so a
    pair model is timed on what it reads) or the lines of plain text (hamlet, .txt).

    `cfg`: a BenchConfig (its data and column fields), or a data source name.
    """
    from ..data import data_spec, load_classification, load_text

    source = cfg if isinstance(cfg, str) else cfg.data
    if source == "hamlet" or source.endswith(".txt"):
        lines = [line.strip() for line in load_text(source).splitlines()]
        texts = [line for line in lines if len(line.split()) >= 4]  # verse and prose, not speaker names
    else:
        test = load_classification(source if isinstance(cfg, str) else data_spec(cfg)).split("test")
        texts = list(zip(test.texts, test.pairs)) if test.pairs else test.texts
    if not texts:
        raise DataError(f"{source} has no texts to benchmark on", "pass a dataset with a test split")
    return texts
