"""The timing process: one per (artifact, provider), run as `python -m toolchain.bench.worker`.

It loads one model, torch or onnxruntime but never both, so neither library's thread pools,
allocator or loaded kernels distort the other's numbers. The parent sends one JSON request per
line on stdin and reads one JSON reply per line; the worker keeps the real stdout for that
channel and points file descriptor 1 at stderr, so a library that prints cannot corrupt it.

Requests (`cmd`): load, prepare, run, generate, peak, quit. Every reply has `ok`; a failed
request answers `{"ok": false, "error": ...}` (or `"skipped"` when the provider is not there)
and the worker carries on.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import MissingPackage, ToolchainError
from .stats import time_runs

CLOCK = time.perf_counter


class Skipped(Exception):
    """The requested provider or mode does not exist here: a 'skipped' row, not an error."""


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB since the last reset_peak_rss()."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux clear_refs), so each configuration gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class OnnxRunner:
    """An onnxruntime session on one provider, with its options recorded."""

    def __init__(self, req: dict):
        from ..runtime import PROVIDERS, make_session

        provider = req["provider"]
        options = provider_options(req) if provider in ("cuda", "tensorrt") else None
        t0 = CLOCK()
        self.spin = req.get("ort_spin", "spin")
        self.session = make_session(Path(req["path"]) / "model.onnx", provider, req["threads"], options, spin=self.spin)
        self.load_s = CLOCK() - t0
        if PROVIDERS[provider] not in self.session.get_providers():
            raise Skipped(f"{provider} not available: onnxruntime fell back to {self.session.get_providers()}")
        self.names = [o.name for o in self.session.get_outputs()]
        self.with_past = any(i.name.startswith("past_key_values") for i in self.session.get_inputs())
        self.no_decode = None if self.with_past else "this ONNX model was exported without the KV cache (export --with-past)"
        self.inputs: list[dict] = []

    def info(self) -> dict:
        o = self.session.get_session_options()
        return {
            "library": "onnxruntime",
            "providers": self.session.get_providers(),
            "provider_options": self.session.get_provider_options(),
            "graph_optimization_level": str(o.graph_optimization_level).split(".")[-1],
            "execution_mode": str(o.execution_mode).split(".")[-1],
            "intra_op_num_threads": o.intra_op_num_threads,
            "inter_op_num_threads": o.inter_op_num_threads,
            "enable_cpu_mem_arena": o.enable_cpu_mem_arena,
            "enable_mem_pattern": o.enable_mem_pattern,
            "ort_spin": self.spin,
        }

    def prepare(self, batches: list[dict]) -> None:
        self.inputs = [self._feeds({k: np.asarray(v, dtype=np.int64) for k, v in b.items()}) for b in batches]

    def _feeds(self, enc: dict, past: dict | None = None) -> dict:
        from ..parity import empty_past, onnx_feeds

        if self.with_past and past is None:  # the first (prefill) call starts from a zero-length cache
            past = {i.name: empty_past(i, enc["input_ids"].shape[0]) for i in self.session.get_inputs()
                    if i.name.startswith("past_key_values")}
        return onnx_feeds(self.session, enc, past)

    def call(self, j: int):
        return self.session.run(None, self.inputs[j])

    def prefill(self, j: int):
        out = dict(zip(self.names, self.call(j)))
        return out, self.inputs[j]["attention_mask"]

    def step(self, state):
        out, mask = state
        token = out["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones_like(token)], axis=1)
        past = {k.replace("present.", "past_key_values.", 1): v for k, v in out.items() if k.startswith("present.")}
        feeds = self._feeds({"input_ids": token, "attention_mask": mask}, past)
        return dict(zip(self.names, self.session.run(None, feeds))), mask


def provider_options(req: dict) -> dict:
    """CUDA / TensorRT options: TensorRT caches its engines (building one takes minutes) per artifact and flags."""
    if req["provider"] == "cuda":
        return {"device_id": 0}
    trt = req.get("trt") or {}
    cache = Path(trt["cache_dir"])
    cache.mkdir(parents=True, exist_ok=True)
    opts = {"device_id": 0, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": bool(trt.get("fp16")), "trt_int8_enable": bool(trt.get("int8"))}
    profile = trt.get("profile")
    if profile:  # explicit shape ranges, so dynamic padding does not rebuild the engine per new length
        for key, (b, s) in (("min", (1, 1)), ("opt", profile["opt"]), ("max", profile["max"])):
            opts[f"trt_profile_{key}_shapes"] = ",".join(f"{n}:{b}x{s}" for n in profile["inputs"])
    return opts


class TorchRunner:
    """A PyTorch model in eager mode (or torch.compile) on cpu or cuda."""

    def __init__(self, req: dict):
        import torch

        from ..modeling import ModelSource, load_model

        provider = req["provider"]
        if provider == "tensorrt":
            raise Skipped("tensorrt is an onnxruntime provider: it runs ONNX artifacts only")
        if provider == "cuda" and not torch.cuda.is_available():
            raise Skipped("cuda not available: torch has no usable GPU here")
        torch.set_num_threads(req["threads"])
        self.torch, self.device = torch, "cuda" if provider == "cuda" else "cpu"
        t0 = CLOCK()
        source = ModelSource(req["path"], req["path"], local=True)
        self.model = load_model(source, req["task"]).to(self.device)
        self.quantized = req.get("torch_quantize")
        if self.quantized == "dynamic-int8":
            if self.device != "cpu":
                raise Skipped("torch.ao dynamic int8 runs on the CPU only")
            self.model = torch_dynamic_int8(self.model)
        elif self.quantized is not None:
            raise ValueError(f"unknown torch_quantize {self.quantized!r} (known: dynamic-int8)")
        self.load_s = CLOCK() - t0
        self.compiled = bool(req.get("torch_compile"))
        if self.compiled:
            self.model = torch.compile(self.model, dynamic=True)
        self.no_decode = None  # a torch causal LM always decodes with its cache
        self.inputs: list[dict] = []

    def info(self) -> dict:
        t = self.torch
        mode = "torch.compile" if self.compiled else "eager"
        return {"library": "torch", "device": self.device, "mode": mode + (" dynamic-int8" if self.quantized else ""),
                "num_threads": t.get_num_threads(), "num_interop_threads": t.get_num_interop_threads(),
                "mkldnn": t.backends.mkldnn.is_available()}

    def prepare(self, batches: list[dict]) -> None:
        from ..parity import position_ids

        self.inputs = []
        for b in batches:
            enc = {k: np.asarray(v, dtype=np.int64) for k, v in b.items()}
            if self.model.config.is_decoder or "CausalLM" in type(self.model).__name__:
                enc["position_ids"] = position_ids(enc["attention_mask"])
            self.inputs.append({k: self.torch.from_numpy(v).to(self.device) for k, v in enc.items()})

    def _sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def call(self, j: int):
        with self.torch.inference_mode():
            out = self.model(**self.inputs[j])
        self._sync()
        return out

    def prefill(self, j: int):
        with self.torch.inference_mode():
            out = self.model(**self.inputs[j], use_cache=True)
        self._sync()
        return out, self.inputs[j]["attention_mask"]

    def step(self, state):
        from ..parity import position_ids

        out, mask = state
        t = self.torch
        with t.inference_mode():
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            mask = t.cat([mask, t.ones_like(token)], dim=1)
            pos = t.from_numpy(position_ids(mask.cpu().numpy())[:, -1:]).to(self.device)
            out = self.model(input_ids=token, attention_mask=mask, position_ids=pos,
                             past_key_values=out.past_key_values, use_cache=True)
        self._sync()
        return out, mask


def torch_dynamic_int8(model):
    """The model with every nn.Linear swapped for torch.ao's dynamic int8 Linear (weights int8, activations
    quantized per call): what a PyTorch user gets in one line, without ONNX. CPU only; deprecated upstream."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8).eval()


def state_dict_bytes(model) -> int:
    """Bytes of the model's state_dict as torch.save writes it: the file size of a quantized torch model."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def generate(runner, j: int, steps: int, clock=CLOCK) -> tuple[float, list[float]]:
    """One prefill of batch j then `steps` greedy decode steps with the KV cache: (prefill s, step s list)."""
    t0 = clock()
    state = runner.prefill(j)
    prefill = clock() - t0
    lat = []
    for _ in range(steps):
        t0 = clock()
        state = runner.step(state)
        lat.append(clock() - t0)
    return prefill, lat


def gemm_peak(provider: str, precision: str, threads: int, n: int, reps: int) -> dict:
    """GFLOP/s (GOP/s for int8) of an n x n x n matrix product in onnxruntime: this machine's limit.

    fp32/fp16 time MatMul, int8 times MatMulInteger (uint8 x int8, what dynamic int8 models run).
    The weight is an initializer, as in a real model, so onnxruntime may pre-pack it. Best of `reps`.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..runtime import make_session

    rng = np.random.default_rng(0)
    if precision == "int8":
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        b = rng.integers(-127, 127, (n, n), dtype=np.int8)
        node, a_type, out_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
    else:
        dt = np.float16 if precision == "fp16" else np.float32
        a, b = rng.standard_normal((n, n)).astype(dt), rng.standard_normal((n, n)).astype(dt)
        a_type = out_type = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
        node = "MatMul"
    graph = helper.make_graph(
        [helper.make_node(node, ["A", "B"], ["Y"])], "gemm",
        [helper.make_tensor_value_info("A", a_type, [n, n])], [helper.make_tensor_value_info("Y", out_type, [n, n])],
        [numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(model, path)
        session = make_session(path, provider, threads, provider_options({"provider": provider}) if provider == "cuda" else None)
    run = _bound_runner(session, a, provider)
    for _ in range(2):
        run()
    best = min(time_runs(lambda _: run(), reps, 0, 1)[0])
    return {"gflops": 2 * n**3 / best / 1e9, "n": n, "reps": reps, "op": node, "precision": precision}


def _bound_runner(session, a: np.ndarray, provider: str):
    """A call that keeps data on the device for GPU providers, so the peak is the chip's, not the bus's."""
    if provider == "cpu":
        return lambda: session.run(None, {"A": a})
    import onnxruntime as ort

    binding = session.io_binding()
    binding.bind_ortvalue_input("A", ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0))
    binding.bind_output("Y", "cuda", 0)

    def run():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


class Worker:
    """Holds one runner and answers the parent's requests."""

    def __init__(self):
        self.runner = None
        self.keys: dict[str, int] = {}  # workload key -> next input index (runs cycle through the batches)
        self.reset_ok = False

    def handle(self, req: dict) -> dict:
        cmd = req["cmd"]
        if cmd == "load":
            cls = OnnxRunner if req["format"] == "onnx" else TorchRunner
            self.runner = cls(req)
            reply = {"load_s": self.runner.load_s, "session": self.runner.info()}
            if getattr(self.runner, "quantized", None):  # no file holds it: report the size it would save to
                reply["file_bytes"] = state_dict_bytes(self.runner.model)
            return reply
        if cmd == "prepare":
            self.runner.prepare(req["batches"])
            self.keys = {req["key"]: 0}
            self.reset_ok = reset_peak_rss()
            return {"n": len(self.runner.inputs), "rss_reset": self.reset_ok}
        if cmd == "run":
            return self._run(req)
        if cmd == "generate":
            return self._generate(req)
        if cmd == "peak":
            return gemm_peak(req["provider"], req["precision"], req["threads"], req["n"], req["reps"])
        raise ValueError(f"unknown command {cmd!r}")

    def _run(self, req: dict) -> dict:
        start = self.keys[req["key"]]
        lat, used = time_runs(self.runner.call, req["n"], start, len(self.runner.inputs))
        if not req.get("warmup"):
            self.keys[req["key"]] = (start + req["n"]) % len(self.runner.inputs)
        return {"latencies": lat, "inputs": used, "peak_rss_mb": peak_rss_mb()}

    def _generate(self, req: dict) -> dict:
        start = self.keys[req["key"]]
        prefill, decode, used = [], [], []
        steps_wanted = 0 if self.runner.no_decode else req["steps"]
        for i in range(req["n"]):
            j = (start + i) % len(self.runner.inputs)
            p, steps = generate(self.runner, j, steps_wanted)
            prefill.append(p)
            decode.append(steps)
            used.append(j)
        if not req.get("warmup"):
            self.keys[req["key"]] = (start + req["n"]) % len(self.runner.inputs)
        return {"prefill": prefill, "decode": decode, "inputs": used, "peak_rss_mb": peak_rss_mb(),
                "no_decode": self.runner.no_decode}


def main() -> None:
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the reply channel
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    worker = Worker()
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        try:
            reply = {"ok": True} | worker.handle(req)
        except Skipped as exc:
            reply = {"ok": False, "skipped": str(exc)}
        except MissingPackage as exc:  # make_session: the provider is not in this onnxruntime build
            reply = {"ok": False, "skipped": exc.problem}
        except Exception as exc:  # any failure is reported as a row, never a crash of the whole run
            reply = {"ok": False, "error": _describe(exc)}
        channel.write(json.dumps(reply) + "\n")


def _describe(exc: Exception) -> str:
    if isinstance(exc, ToolchainError):
        return exc.problem
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


if __name__ == "__main__":
    main()
