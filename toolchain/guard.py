"""What keeps inputs and a user's files safe, one rule each, applied before any work starts.

- An output is never an input, inside one, or around one (`refuse_overlap`): `quantize A A/int8`
  would change A, `quantize A A --force` would replace it.
- One writer per output (`output_lock`): a second process writing the same path stops at once
  with exit 6, instead of training for an hour and then replacing (or failing over) the first.
- `writes_output` puts both around a transform stage `fn(src, cfg, out, *, force)`, so the CLI,
  recipes and the Python API get them alike.

Locks live in the system temporary folder, not beside the output: a refused command leaves
nothing in the user's folder, and a lock left by a killed process is released by the kernel.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import OutputExists

_held: dict[str, int] = {}  # lock files this process holds, with their depth: a stage inside a stage re-enters
_held_guard = threading.Lock()


def real_path(path: str | Path) -> Path:
    """The absolute path with every existing link resolved (the last parts may not exist yet)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _local(value: Any) -> Path | None:
    """The local path an input names, or None (a built-in name, a hub id, an unset option)."""
    location = getattr(value, "location", None) or getattr(value, "path", None) or value
    if not isinstance(location, (str, Path)) or not str(location):
        return None
    path = Path(location).expanduser()
    return path if path.exists() or path.is_symlink() else None


def refuse_overlap(out: str | Path, inputs: Iterable[Any], what: str = "output") -> None:
    """Refuse an output that is an input, lies inside one, or holds one (OutputExists, exit 6)."""
    target = real_path(out)
    for value in inputs:
        path = _local(value)
        if path is None:
            continue
        source = real_path(path)
        if target == source or source in target.parents:
            raise OutputExists(f"the {what} {out} is inside the input {path}: writing it would change the input",
                               "choose an output folder outside the input")
        if target in source.parents:
            raise OutputExists(f"the input {path} is inside the {what} {out}: writing it would replace the input",
                               "choose an output folder that does not hold the input")


def lock_dir() -> Path:
    """Where output locks live: $TOOLCHAIN_LOCK_DIR, else a per-user folder in the system temporary folder."""
    default = Path(tempfile.gettempdir()) / f"toolchain-locks-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    return Path(os.environ.get("TOOLCHAIN_LOCK_DIR") or default)


@contextlib.contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """Hold the one-writer lock of `out`; another process holding it is OutputExists at once (no waiting).

    >>> with output_lock("runs/int8"):  # doctest: +SKIP
    ...     quantize_into("runs/int8")
    """
    from filelock import FileLock, Timeout

    target = str(real_path(out))
    folder = lock_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = str(folder / (hashlib.sha256(target.encode()).hexdigest()[:32] + ".lock"))
    with _held_guard:
        depth = _held.get(name, 0)
        _held[name] = depth + 1
    lock = None
    try:
        # Under torchrun every rank runs the stage and only rank 0 writes: the others must not contend for the lock.
        if depth == 0 and os.environ.get("RANK", "0") == "0":
            lock = FileLock(name, timeout=0)
            try:
                lock.acquire()
            except Timeout:
                raise OutputExists(f"another toolchain process is writing {out} now",
                                   "wait for it to finish, or choose another output folder") from None
        yield
    finally:
        if lock is not None and lock.is_locked:
            lock.release()
        with _held_guard:
            _held[name] -= 1
            if not _held[name]:
                del _held[name]


def writes_output(*input_fields: str) -> Callable:
    """Decorate a transform stage `fn(src, cfg, out, *, force=False)`: lock `out`, refuse overlap with `src`
    and with the config's path fields named here (e.g. "data"), then run it.

    >>> @writes_output("data")
    ... def finetune(src, cfg, out, *, force=False): ...  # doctest: +SKIP
    """

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(src, cfg, out, *args, **kwargs):
            with output_lock(out):
                refuse_overlap(out, [src, *(getattr(cfg, f, None) for f in input_fields)])
                return fn(src, cfg, out, *args, **kwargs)

        return run

    return wrap


def regular_file(path: str | Path, error: type, what: str = "file") -> Path:
    """`path` if it is a regular file; a FIFO, device, socket or folder is `error` (opening a FIFO would hang)."""
    import stat

    path = Path(path).expanduser()
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        from .errors import InputNotFound

        raise InputNotFound(f"{path} does not exist", "check the path") from None
    except OSError as exc:
        raise error(f"{path} cannot be read: {exc.strerror or exc}", f"pass a readable {what}") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise error(f"{path} is {kind}, not a regular {what}",
                    f"pass a regular {what}" + ("" if stat.S_ISDIR(mode) else ", saved to disk first"))
    return path
