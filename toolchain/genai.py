"""ONNX Runtime GenAI's model builder as an export backend for Llama-family causal LMs (`export --backend genai`).

The builder (`python -m onnxruntime_genai.models.builder`) writes the graph ONNX Runtime GenAI runs: fused
GroupQueryAttention with rotary embedding inside it, the KV cache as `past_key_values.N.key/value` inputs and
`present.N.key/value` outputs, SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization, and for int8 /
int4 weight-only MatMulNBits with an accuracy level. It also writes `genai_config.json`, which the bundle ships.

Why its own environment: onnxruntime-genai 0.18's builder imports names that exist only in transformers 5.x
(with 4.57.6: `ImportError: cannot import name 'Qwen3_5ForConditionalGeneration'`), while optimum-onnx 0.1.0,
which exports every other model here, requires transformers < 4.58. One environment cannot hold both, and
the builder is a converter (weights in, ONNX files out), so it runs as a subprocess in a virtual environment of
its own: pinned versions, created once under the toolchain cache and reused. Nothing but files crosses the
boundary; the toolchain's environment then checks the graph against its own PyTorch model (parity), and writes
the manifest. `TOOLCHAIN_GENAI_PYTHON` points at another interpreter that has the builder, to skip creating one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .assets import cache_dir
from .errors import CheckFailed, MissingPackage, Unsupported

# Resolved together on 2026-12-02 (transformers 5.25.0 did not resolve with the builder; 5.24.0 works).
# torch is the CPU wheel the project pins (a bare `torch` would pull a multi-GB CUDA build).
BUILDER_PINS = ("torch==2.13.0", "onnxruntime-genai==0.18.0", "transformers==5.24.0", "onnxruntime==1.32.0",
                "onnx==1.23.2", "onnx-ir==1.1.0", "safetensors==0.8.0", "tqdm")
BUILDER_MODULE = "onnxruntime_genai.models.builder"
PYTHON_ENV = "TOOLCHAIN_GENAI_PYTHON"
# Architectures the builder maps to its Llama-style decoder (its create_model table) and the toolchain
# exports, prunes and evaluates; others (GPT-2) stay on optimum's exporter.
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
PRECISIONS = ("fp32", "int8", "int4")
# Payload files the builder writes that the artifact keeps (the ONNX graph and its external data are added).
KEEP = ("genai_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "chat_template.jinja", "generation_config.json")


def env_key() -> str:
    """The builder environment's folder name: changes whenever the pins or this Python's version do."""
    text = "\n".join(BUILDER_PINS) + f"\npython{sys.version_info.major}.{sys.version_info.minor}"
    return "genai-builder-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def builder_python(create: bool = True) -> Path:
    """The Python interpreter of the builder's environment; created (once, under a lock) when missing."""
    if os.environ.get(PYTHON_ENV):
        return Path(os.environ[PYTHON_ENV])
    env = cache_dir() / env_key()
    python, ready = env / "bin" / "python", env / ".ready"
    if ready.is_file():
        return python
    if not create:
        raise MissingPackage(f"the GenAI builder environment {env} does not exist yet",
                             "run toolchain export --backend genai once with access to PyPI")
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / f".{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two exports at once: the second waits, then finds it ready
        if not ready.is_file():
            _create_env(env)
            ready.write_text("\n".join(BUILDER_PINS) + "\n")
    return python


def _create_env(env: Path) -> None:
    shutil.rmtree(env, ignore_errors=True)  # a half-made environment (no .ready) from an interrupted run
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [[base, "-m", "venv", str(env)],
             [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              *BUILDER_PINS]]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(env, ignore_errors=True)
            raise MissingPackage(f"could not create the GenAI builder environment: {_last_line(done)}",
                                 f"check access to PyPI, or set {PYTHON_ENV} to a Python with "
                                 f"{' '.join(BUILDER_PINS[1:3])}")


def check_supported(config) -> None:
    """Refuse a model the builder does not build as a Llama-style decoder, before any work."""
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    if arch not in ARCHITECTURES:
        raise Unsupported(f"the GenAI builder backend takes {', '.join(ARCHITECTURES)}; this model is {arch}",
                          "export with the default backend (--backend optimum)")


def builder_command(python: Path, model_dir: Path, out_dir: Path, scratch: Path, precision: str,
                    accuracy_level: int | None, block_size: int, symmetric: bool = True) -> list[str]:
    """The builder's command line for a local Hugging Face folder, CPU, no hub access and no remote code."""
    options = ["hf_token=false", "hf_remote=false"]
    if precision != "fp32":
        # accuracy_level 4 (int8 activations) is the builder's CPU default; written out so the manifest says it.
        options += [f"accuracy_level={4 if accuracy_level is None else accuracy_level}", f"block_size={block_size}",
                    f"is_symmetric={'true' if symmetric else 'false'}"]
    return [str(python), "-m", BUILDER_MODULE, "-i", str(model_dir), "-o", str(out_dir), "-p", precision,
            "-e", "cpu", "-c", str(scratch), "--extra_options", *options]


def run_builder(cmd: list[str], threads: int | None = None) -> str:
    """Run the builder; its output (for the manifest's log) or a one-line error naming its last line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)  # the toolchain's environment must not leak into the builder's
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise CheckFailed(f"the GenAI model builder failed: {_last_line(done)}",
                          "export with --backend optimum, or check the model folder loads with transformers 5.x")
    return done.stdout + done.stderr


def collect(built: Path, folder: Path) -> list[str]:
    """Move the builder's graph, its external data and genai_config.json into the artifact folder."""
    if not (built / "model.onnx").is_file():
        raise CheckFailed(f"the GenAI model builder wrote no model.onnx in {built}", "see the builder's log")
    moved = []
    for path in sorted(built.iterdir()):
        if path.name == "model.onnx" or path.name.startswith("model.onnx.") or path.name in KEEP:
            shutil.move(str(path), folder / path.name)
            moved.append(path.name)
    return moved


def fix_cache_dims(model_path: Path) -> int:
    """Write the head size into the graph's KV-cache dims; returns how many dims it set.

    The builder names the cache's last dim `kv_cache_dim` (GenAI's runtime reads head_size from genai_config.json),
    so plain onnxruntime callers, which make an empty cache by zeroing the named dims, would feed head size 0.
    Only the declared input/output shapes change, never a weight or a node.
    """
    import json

    import onnx

    head = json.loads((model_path.parent / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
    model = onnx.load(str(model_path), load_external_data=False)
    fixed = 0
    for value in [*model.graph.input, *model.graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            for dim in value.type.tensor_type.shape.dim[3:]:
                if dim.dim_param:
                    dim.dim_value = head  # setting the value clears dim_param (a oneof)
                    fixed += 1
    onnx.save(model, str(model_path))  # external data references are kept as they are
    return fixed


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
    return lines[-1][:300]
