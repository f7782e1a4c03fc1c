"""Pre-processing and calibration for static int8: shape inference that works on the toolchain's own
exports, and activation ranges measured on samples of the task data, one sample at a time.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import BadModel, CheckFailed, DataError, WriteFailed, from_exception
from .graph import HUGE

MIN_SAMPLES = 8  # fewer and one unusual sentence sets a whole layer's range
FEW_SAMPLES = 64  # below this MinMax ranges are noisy: warn


def preprocess(src: Path, dst: Path) -> str:
    """Shape inference and constant folding before quantization; returns the inference that worked.

    Symbolic shape inference types fused contrib ops (Attention, SkipLayerNormalization), which ONNX's
    own cannot; on BERT exports it fails unless dims may be merged (auto_merge), and where it still
    fails ONNX shape inference is used alone.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src).resolve(), Path(dst).resolve()
    try:
        # Incomplete symbolic inference saves a model-sized sym_shape_infer_temp.onnx (+ .data) into
        # the current directory: run it in the work folder, not the user's.
        with warnings.catch_warnings(), _working_directory(dst.parent):
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(dst), auto_merge=True, guess_output_rank=True)
        return "symbolic"
    except Exception:  # noqa: BLE001  (symbolic inference raises bare Exceptions)
        pass
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return "onnx"
    except Exception as exc:  # noqa: BLE001
        failed_write = from_exception(exc)
        if isinstance(failed_write, WriteFailed):  # a full disk is not a bad model: exit 13, as everywhere
            raise failed_write from None
        raise BadModel(f"quantization pre-processing failed on {src}: {str(exc).splitlines()[0][:200]}",
                       "re-export the model, or quantize the unoptimized export") from None


@contextlib.contextmanager
def _working_directory(path: Path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def sample_feeds(session, tokenizer, data, n: int, max_length: int) -> list[dict[str, np.ndarray]]:
    """`n` single-example input dicts for `session` from task data (classification data or plain text);
    with-past graphs get an empty cache. Single examples carry no padding, so no mask fill values."""
    from ..data import calibration_batches
    from ..parity import empty_past
    from ..parity import onnx_feeds

    batches = calibration_batches(tokenizer, data, n, max_length)
    if len(batches) < min(n, MIN_SAMPLES):
        raise DataError(f"only {len(batches)} calibration samples could be made; at least {MIN_SAMPLES} are needed",
                        "pass more data, or a longer text")
    past = {i.name: i for i in session.get_inputs() if i.name.startswith("past_key_values")}
    return [onnx_feeds(session, b, {k: empty_past(i, 1) for k, i in past.items()}) for b in batches]


def check_sample_count(n: int) -> list[str]:
    """Too few samples is an error; few is a warning."""
    if n < MIN_SAMPLES:
        raise DataError(f"{n} calibration samples are too few for static int8 (minimum {MIN_SAMPLES})",
                        f"use --calibration-samples {FEW_SAMPLES} or more")
    if n < FEW_SAMPLES:
        msg = f"{n} calibration samples: activation ranges may not cover real inputs ({FEW_SAMPLES}+ recommended)"
        warnings.warn(msg)
        return [msg]
    return []


class _OneAtATime:
    """The calibration reader interface over one sample."""

    def __init__(self, sample: dict):
        self.items = [sample]

    def get_next(self):
        return self.items.pop() if self.items else None


def calibrate(model_path: Path, feeds: list[dict], method: str, op_types: list[str], symmetric: bool,
              percentile: float, skip_tensors: set[str], workdir: Path):
    """Activation ranges (ORT TensorsData) of the inputs/outputs of `op_types` nodes, over `feeds`.

    Samples are fed one at a time: histogram calibrators stack all collected outputs into one array,
    which fails when sentences have different lengths. Mask-path tensors are not collected.
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator
    from ..console import bar

    calibrate_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile}[method]
    options = {"symmetric": symmetric, "percentile": percentile}
    calibrator = create_calibrator(model_path, op_types, augmented_model_path=str(workdir / "augmented.onnx"),
                                   calibrate_method=calibrate_method, extra_options=options)
    if getattr(calibrator, "tensors_to_calibrate", None):
        calibrator.tensors_to_calibrate -= skip_tensors
    # The histogram calibrators print progress to stdout on every call, which would corrupt --json output.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            for sample in bar(feeds, desc=f"quantize: calibrate ({method})", unit="sample"):
                calibrator.collect_data(_OneAtATime(sample))
            return calibrator.compute_data()
        except (ValueError, FloatingPointError, OverflowError, MemoryError) as exc:
            raise CheckFailed(
                f"{method} calibration failed ({str(exc)[:120]}): a calibrated tensor holds non-finite or huge "
                "values, as attention-mask fill values (float-min) do",
                "keep the mask guard on, exclude the nodes that read the mask (--exclude-node), "
                "or use --calibration-method minmax") from None


def drop_huge_ranges(ranges) -> list[str]:
    """Remove ranges that are not finite or beyond HUGE (mask fill values); returns their tensor names."""
    bad = []
    for name, data in list(ranges.data.items()):
        lo, hi = (np.asarray(v, dtype=np.float64) for v in data.range_value)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or max(np.abs(lo).max(), np.abs(hi).max()) >= HUGE:
            bad.append(name)
            del ranges.data[name]
    return bad
