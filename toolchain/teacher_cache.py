"""Teacher logits computed once and kept on disk, so later runs train without the teacher in memory.

A cache is a folder named by a key: the sha256 of the teacher's content hash, the data source,
max_length, the tokenized training inputs themselves and the top-k setting. Any change in the
teacher's weights, the data or the tokenization gives a new key, so a stale cache is never read.
Rows (one per example for a classifier, one per token for a causal LM) are written in shards of
`SHARD_EXAMPLES` examples as safetensors files; `meta.json` is written last and the folder is
renamed into place, so an interrupted build leaves no cache that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SHARD_EXAMPLES = 2048
CACHE_VERSION = 1


def cache_key(teacher_hash: str, source: str, max_length: int, examples: list[dict], top_k: int | None) -> str:
    """Key of a teacher's logits on these tokenized examples."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, teacher_hash, source, max_length, top_k]).encode())
    for e in examples:
        h.update(json.dumps([e["input_ids"], e.get("token_type_ids")]).encode())
    return h.hexdigest()


@dataclass
class TeacherCache:
    """Teacher rows of every training example, in memory: `values` [rows, C or k], `index` [rows, k] or None."""

    folder: Path
    values: torch.Tensor
    index: torch.Tensor | None
    offsets: list[int]  # rows of example i are offsets[i]:offsets[i+1]

    @classmethod
    def load(cls, folder: Path, examples: int | None = None) -> "TeacherCache | None":
        """The cache in `folder`, or None when there is no complete, intact one (of `examples` examples).

        A cache is only ever a speed-up, so anything wrong with it (a shard cut short, meta.json edited to
        name files elsewhere, rows that do not add up) means "no cache": the caller rebuilds it.
        """
        try:
            cache = cls._read(Path(folder))
        except Exception:  # noqa: BLE001  safetensors, torch and json each raise their own types for damage
            return None
        if cache is not None and examples is not None and len(cache) != examples:
            return None
        return cache

    @classmethod
    def _read(cls, folder: Path) -> "TeacherCache | None":
        import torch
        from safetensors.torch import load_file

        meta_path = folder / "meta.json"
        if not meta_path.is_file() or meta_path.is_symlink():
            return None
        meta = json.loads(meta_path.read_text())
        names = meta.get("shards") if isinstance(meta, dict) and meta.get("version") == CACHE_VERSION else None
        if not isinstance(names, list) or not names or not all(_confined(folder, n) for n in names):
            return None
        shards = [load_file(folder / name) for name in names]
        values = torch.cat([s["values"] for s in shards])
        index = torch.cat([s["index"] for s in shards]) if "index" in shards[0] else None
        lengths = torch.cat([s["lengths"] for s in shards]).tolist()
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        if offsets[-1] != len(values) or (index is not None and len(index) != len(values)) \
                or len(lengths) != meta.get("examples") or min(lengths) < 0:
            return None
        return cls(folder, values, index, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self, i: int):
        """(values, index) rows of example i."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.values[a:b], (self.index[a:b] if self.index is not None else None)


def _confined(folder: Path, name) -> bool:
    """A shard name from meta.json that is a plain file of this folder: no path, no link, nothing elsewhere."""
    return (isinstance(name, str) and name == Path(name).name and name.endswith(".safetensors")
            and not (folder / name).is_symlink() and (folder / name).is_file())


def build(folder: Path, teacher_rows, examples: list[dict], batch_size: int, progress: bool = True) -> TeacherCache:
    """Run `teacher_rows(batch_examples) -> [(values, index)] per example` over all examples and store them."""
    import torch
    from safetensors.torch import save_file

    from .console import bar as progress_bar

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards, pending = [], []
    bar = progress_bar(desc=f"teacher logits ({folder.name})", total=len(examples), unit="ex", show=progress)
    try:
        for start in range(0, len(examples), batch_size):
            pending += teacher_rows(examples[start:start + batch_size])
            bar.update(min(batch_size, len(examples) - start))
            while len(pending) >= SHARD_EXAMPLES or (pending and start + batch_size >= len(examples)):
                chunk, pending = pending[:SHARD_EXAMPLES], pending[SHARD_EXAMPLES:]
                name = f"shard-{len(shards):05d}.safetensors"
                tensors = {"values": torch.cat([v for v, _ in chunk]).contiguous(),
                           "lengths": torch.tensor([len(v) for v, _ in chunk], dtype=torch.int64)}
                if chunk[0][1] is not None:
                    tensors["index"] = torch.cat([i for _, i in chunk]).to(torch.int32).contiguous()
                save_file(tensors, str(tmp / name))
                shards.append(name)
        (tmp / "meta.json").write_text(json.dumps({"version": CACHE_VERSION, "examples": len(examples),
                                                   "shards": shards}, indent=2))
        if folder.is_symlink():  # never follow a link out of the cache: replace the link itself
            folder.unlink()
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(tmp, folder)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return TeacherCache.load(folder)
