"""Open ONNX files safely and build ONNX Runtime sessions with recorded options."""

from __future__ import annotations

from pathlib import Path

from .errors import BadModel, InputNotFound, MissingPackage, UnsafeInput

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def check_onnx_file(path: str | Path):
    """Parse `path` without loading external data; refuse external data outside its folder."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"{path} does not exist", "check the path, or export the model first")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise BadModel(f"{path} is not a valid ONNX model ({type(exc).__name__})", "re-export the model") from None
    if not model.graph.node:
        raise BadModel(f"{path} holds an empty ONNX graph", "re-export the model")
    for tensor in external_tensors(model):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (path.parent / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(path.parent.resolve()):
            raise UnsafeInput(
                f"{path}: tensor {tensor.name!r} reads external data from {location!r}, outside the model's folder",
                "only use ONNX files whose external data sits beside them",
            )
    return model


def external_tensors(model):
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def onnx_file_bytes(path: Path, model=None) -> int:
    """An ONNX file's size with the external data files its tensors name (a 539 MB LM is a 0.2 MB graph);
    `model`: the file already loaded without its external data."""
    import onnx

    model = model if model is not None else onnx.load(str(path), load_external_data=False)
    files = {e.value for t in external_tensors(model) for e in t.external_data if e.key == "location"}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files if (path.parent / f).is_file())


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


# ONNX Runtime's CPU SkipLayerNormalization kernel (1.32) is 5-8x slower than the Add + LayerNormalization
# it replaces (measured here, 1 thread: 44 vs 8.8 us at 26x384, 2.5 vs 0.31 ms at 32x50x384) and took ~35% of
# an int8 MiniLM's batch-1 time. ORT's SkipLayerNormFusion pass re-creates the op at session start, so CPU
# sessions turn that pass off; toolchain.optimize leaves Add + LayerNorm unfused on CPU for the same reason.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


# How the intra-op threads wait for work (SPIN): "spin" is onnxruntime's default (they keep spinning for a while
# after each run, on cores other processes may need), "stop" spins during a run only (session.force_spinning_stop),
# "off" never spins (session.intra_op.allow_spinning=0).
SPIN = {"spin": {}, "stop": {"session.force_spinning_stop": "1"}, "off": {"session.intra_op.allow_spinning": "0"}}


def make_session(path: str | Path, provider: str = "cpu", threads: int | None = None,
                 provider_options: dict | None = None, spin: str = "spin"):
    """An InferenceSession on one provider (short name: cpu, cuda, tensorrt), full graph optimization."""
    import onnxruntime as ort

    check_onnx_file(path)
    name = PROVIDERS.get(provider, provider)
    if name not in ort.get_available_providers():
        raise MissingPackage(
            f"execution provider {provider} is not available (have: {', '.join(ort.get_available_providers())})",
            "install toolchain[gpu] (onnxruntime-gpu) on a machine with a GPU",
        )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    for key, value in SPIN[spin].items():
        opts.add_session_config_entry(key, value)
    providers = [(name, provider_options or {})]
    if name == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.append(("CUDAExecutionProvider", {}))  # nodes TensorRT cannot take stay on the GPU
    if name != "CPUExecutionProvider":
        providers.append(("CPUExecutionProvider", {}))
    try:
        disabled = list(CPU_DISABLED_OPTIMIZERS) if name == "CPUExecutionProvider" else None
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers, disabled_optimizers=disabled)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BadModel(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0][:300]}", "re-export the model") from None
