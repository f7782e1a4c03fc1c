"""What a person reads while the toolchain works: a few lines per step, bars only on a terminal, and
everything else (library warnings, the Trainer's loss records, ONNX Runtime's optimizer notes) in the
run's log file instead of the terminal.

`toolchain -q` prints results and errors only; `toolchain -v` also shows what goes to the log.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Iterable, Iterator, TextIO

QUIET, NORMAL, VERBOSE = 0, 1, 2
LOG_FILE = "toolchain.log"  # in the run folder
# Loggers whose messages are third-party chatter: kept in the log, shown on the terminal with -v only.
# onnxruntime.transformers warns "Input hidden size (192) is not same as weight matrix dimension of q,k,v
# (384)" once per attention it checks, even when the fusion then succeeds.
CHATTY = ("transformers", "onnxruntime", "optimum", "torch", "datasets", "huggingface_hub", "accelerate")
# Modules whose warnings (deprecations, "mtime may not be reliable on this filesystem") are not the user's news.
LIBRARY_WARNINGS = r"(transformers|torch|onnxruntime|onnx|optimum|datasets|huggingface_hub|accelerate|sklearn)(\.|$)"
log = logging.getLogger("toolchain")
BAR_LINE = re.compile(r"\|\s*\d+/\d+ \[")  # a library's progress bar redrawn into a captured stream

_level = NORMAL
_terminal: TextIO | None = None  # the real stderr while capture() has redirected sys.stderr
_log_file: Path | None = None  # while log_to() is active


def set_level(level: int) -> None:
    """QUIET, NORMAL or VERBOSE: set once by the `toolchain` command from -q / -v."""
    global _level
    _level = max(QUIET, min(VERBOSE, level))


def hush_library_warnings() -> None:
    """Outside a run log, drop libraries' warnings from the terminal unless -v (a run keeps them in its log)."""
    if not shows(VERBOSE):
        warnings.filterwarnings("ignore", module=LIBRARY_WARNINGS)


def level() -> int:
    return _level


def shows(at: int) -> bool:
    """Whether a message of level `at` reaches the terminal."""
    return _level >= at


def terminal() -> TextIO:
    """Where messages and bars go: stderr, even while a stage's own output is captured into the log."""
    return _terminal or sys.stderr


def say(msg: str, at: int = NORMAL) -> None:
    """Print one line to the terminal (stderr) at level `at`, above any bar; always into the log."""
    log.info(msg)
    if shows(at):
        from tqdm import tqdm

        tqdm.write(msg, file=terminal())


def duration(seconds: float) -> str:
    """A duration as a person reads it.

    >>> duration(4.23), duration(1579.5), duration(3720)
    ('4.2s', '26m20s', '1h02m')
    """
    seconds = max(0.0, float(seconds))
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it",
        show: bool = True):
    """A progress bar that names what it works on; none when stderr is not a terminal (CI, a file) or -q.

    >>> for batch in bar(batches, desc="evaluate int8-dynamic (test)"): ...  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    out = terminal()
    off = not show or not shows(NORMAL) or not (hasattr(out, "isatty") and out.isatty())
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, disable=off, file=out,
                dynamic_ncols=True)


def artifact_name(path: str | Path) -> str:
    """The name a person knows a folder by: a stage's hidden `.partial-NAME-PID` staging folder is NAME."""
    name = Path(path).name
    m = re.fullmatch(r"\.partial-(.+)-\d+", name)
    return m.group(1) if m else name


class _Writer(io.TextIOBase):
    """A text stream whose complete lines go to the log (which -v also shows)."""

    def __init__(self, name: str):
        self.name, self.pending = name, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.replace("\r", "\n").split("\n")
        for line in lines:
            if line.strip() and not BAR_LINE.search(line):
                logging.getLogger(f"toolchain.{self.name}").info(line)  # -v: log_to shows it too
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.write("\n")


@contextlib.contextmanager
def capture() -> Iterator[None]:
    """Send what libraries print to stdout / stderr during a stage into the log; say() and bar() still
    reach the terminal."""
    global _terminal
    if _terminal is not None:  # already captured (a stage inside a stage)
        yield
        return
    _terminal = sys.stderr
    try:
        with contextlib.redirect_stdout(_Writer("stdout")), contextlib.redirect_stderr(_Writer("stderr")):
            yield
    finally:
        _terminal = None


@contextlib.contextmanager
def log_to(path: str | Path) -> Iterator[Path]:
    """Append python logging, warnings and library loggers to `path` while the block runs.

    The toolchain's own warnings are also shown on the terminal, one line each; library warnings and
    library log records stay in the file (shown too with -v). ONNX Runtime's C++ log is cut to errors.
    """
    global _log_file
    path = Path(path)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    saved = {"root": root.level, "show": warnings.showwarning}
    loggers = _quiet_libraries()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    log.setLevel(logging.INFO)
    warnings.showwarning = _show_warning
    echo = None
    if shows(VERBOSE):
        echo = logging.StreamHandler(_TerminalStream())
        echo.addFilter(lambda record: record.name != log.name)  # the toolchain's own lines are printed already
        root.addHandler(echo)
    handler.stream.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n")
    _log_file = path
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("default", module=LIBRARY_WARNINGS)  # into the log, once per place
            warnings.showwarning = _show_warning
            yield path
    finally:
        _log_file = None
        for h in (handler, echo):
            if h is not None:
                root.removeHandler(h)
        handler.close()
        root.setLevel(saved["root"])
        warnings.showwarning = saved["show"]
        for restore in loggers:
            restore()


@contextlib.contextmanager
def library_logs() -> Iterator[None]:
    """Outside a run with a log file, drop library log records (-v shows them): ONNX Runtime's optimizer
    logs from modules named `fusion_attention`, `onnx_model`, ... that no logger prefix catches."""
    root = logging.getLogger()
    if _log_file is not None or shows(VERBOSE):  # they go to the run's log, or -v asked for them
        yield
        return
    null = logging.NullHandler()
    root.addHandler(null)  # a handler, so logging's last-resort printer to stderr stays unused
    try:
        yield
    finally:
        root.removeHandler(null)


class _TerminalStream:
    def write(self, text: str) -> None:
        terminal().write(text)

    def flush(self) -> None:
        terminal().flush()


def _quiet_libraries() -> list:
    """Make library loggers propagate to the root (the log file) instead of printing; returns undo steps."""
    undo = []
    for name in CHATTY:
        lg = logging.getLogger(name)
        before = (lg.propagate, list(lg.handlers), lg.level)
        lg.propagate, lg.handlers = True, [h for h in lg.handlers if isinstance(h, logging.FileHandler)]
        if lg.level == logging.NOTSET or lg.level > logging.WARNING:
            lg.setLevel(logging.WARNING)
        undo.append(lambda lg=lg, b=before: (setattr(lg, "propagate", b[0]), setattr(lg, "handlers", b[1]),
                                             lg.setLevel(b[2])))
    if "transformers" in sys.modules or _importable("transformers"):
        from transformers.utils import logging as hf_logging

        # transformers adds its own stderr handler (once, lazily) to its library logger: take it off.
        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
        undo.append(lambda: (hf_logging.disable_propagation(), hf_logging.enable_default_handler()))
    if _importable("onnxruntime"):
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # C++ warnings (initializers removed, etc.) are not news
        undo.append(lambda: onnxruntime.set_default_logger_severity(2))
    return undo


def _importable(name: str) -> bool:
    import importlib.util

    return name in sys.modules or importlib.util.find_spec(name) is not None


_OWN = str(Path(__file__).resolve().parent)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The toolchain's own warnings are news: one terminal line. Libraries' go to the log only."""
    text = str(message).strip()
    if str(Path(filename).resolve()).startswith(_OWN) and issubclass(category, UserWarning):
        log.warning(text)
        if shows(QUIET):
            terminal().write(f"    warning: {text}\n")
    else:
        logging.getLogger("py.warnings").warning("%s:%s: %s: %s", filename, lineno, category.__name__, text)


def epoch_lines(label: str, epochs: float, metric: str = "accuracy", show_bar: bool = True):
    """A Trainer callback: one line per epoch ("epoch 2/3  val accuracy 0.8123  best"), a bar over the
    training steps naming `label`, and the Trainer's log records (losses) into the log instead of stdout.

    Call `.report(value)` from another callback to print an epoch's line when the Trainer does not
    evaluate itself (distill scores the student after each epoch); the Trainer's `on_evaluate` calls it
    otherwise.
    """
    from transformers import TrainerCallback

    class EpochLines(TrainerCallback):
        def __init__(self):
            self.best, self.epoch, self.bar = None, 0, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = bar(desc=f"{label}: training", total=state.max_steps, unit="step", show=show_bar)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                plain = {k: round(v, 5) if isinstance(v, float) else v for k, v in logs.items()}
                logging.getLogger("toolchain.train").info("%s step %s: %s", label, state.global_step, plain)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            key = f"eval_{metric}"
            if metrics and key in metrics:
                self.report(metrics[key])

        def report(self, value: float) -> float:
            self.epoch += 1
            best = self.best is None or value > self.best
            self.best = value if best else self.best
            say(f"    epoch {self.epoch}/{epochs:g}  val {metric} {value:.4f}" + ("  best" if best else ""))
            return value

    return EpochLines()
