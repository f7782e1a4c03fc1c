"""The toolchain's own errors: each names the problem and the fix, and maps to a distinct exit code.

The CLI prints `error: <problem>` and `  fix: <fix>` and exits with the code, so scripts can tell
a missing file from a failed parity check without parsing text.
"""

from __future__ import annotations


class ToolchainError(Exception):
    """Base class: a problem the user can fix. Never raised for bugs in the toolchain itself."""

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return self.problem if not self.fix else f"{self.problem} (fix: {self.fix})"


class InputNotFound(ToolchainError):
    """A path, built-in name or hub id that does not resolve to anything."""

    exit_code = 3


class BadModel(ToolchainError):
    """A folder or file that is not a usable model: no config, corrupt weights, wrong shapes."""

    exit_code = 4


class DataError(ToolchainError):
    """A dataset that cannot be used: missing columns, no rows, bad encoding, unknown labels."""

    exit_code = 5


class OutputExists(ToolchainError):
    """The output folder already holds something the toolchain would overwrite."""

    exit_code = 6


class CheckFailed(ToolchainError):
    """A numerical check (export parity, accuracy budget) failed: the artifact is not shipped."""

    exit_code = 7


class RecipeError(ToolchainError):
    """A recipe or stage config that does not validate: unknown key, wrong type, bad value."""

    exit_code = 8
    key: str | None = None  # the config key at fault, when known: a recipe turns it into a line number


class IntegrityError(ToolchainError):
    """An artifact or bundle whose files do not match the hashes in its manifest."""

    exit_code = 9


class UnsafeInput(ToolchainError):
    """Input that would run code or read outside its folder: pickles, remote code, ../ paths."""

    exit_code = 10


class MissingPackage(ToolchainError):
    """An optional package (a built-in asset, onnxruntime-gpu, ...) that is not installed."""

    exit_code = 11


class Unsupported(ToolchainError):
    """A task, architecture or option combination the toolchain does not handle."""

    exit_code = 12


class WriteFailed(ToolchainError):
    """The output could not be written (disk full, no permission): nothing was left that looks finished."""

    exit_code = 13


# Exit code of an exception the toolchain did not expect: a bug to report, never shown as a traceback
# unless TOOLCHAIN_DEBUG=1 (os.EX_SOFTWARE, "internal software error").
INTERNAL_ERROR_EXIT = 70


def from_exception(exc: BaseException) -> ToolchainError | None:
    """The toolchain error an unexpected exception amounts to: a full disk is WriteFailed wherever it
    happens, a missing file InputNotFound, memory exhausted its own line. None for anything else (a bug)."""
    import errno

    if isinstance(exc, MemoryError):
        return ToolchainError("ran out of memory", "use a smaller model, batch size or --max-length, or a bigger machine")
    if not isinstance(exc, OSError):
        # Libraries with C++ cores (onnx, onnxruntime, safetensors) report a full disk in their own exception types.
        text = str(exc)
        if any(s in text for s in ("No space left on device", "Disk quota exceeded", "File too large")):
            return WriteFailed(f"could not write: {text.splitlines()[0][:200]}",
                               "free disk space or fix the folder's permissions, then run the same command again")
        return None
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return WriteFailed(f"could not write: {exc.strerror or exc}{where}",
                           "free disk space, then run the same command again")
    if exc.errno in (errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM):  # a read refused this way is rare
        return WriteFailed(f"could not read or write: {exc.strerror or exc}{where}",
                           "fix the permissions of that path (or write somewhere writable), then run again")
    if exc.errno == errno.ENOENT:
        return InputNotFound(f"{exc.strerror or exc}{where}", "check the path")
    return ToolchainError(f"{exc.strerror or exc}{where}", "check the path and its permissions")
