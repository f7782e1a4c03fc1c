"""The parent's side of a worker process: start it, send requests, read replies, stop it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile


class WorkerDied(Exception):
    """The worker process ended (crash, out of memory, killed) before answering."""


class WorkerClient:
    """One `python -m toolchain.bench.worker` process, spoken to in JSON lines over its pipes.

    >>> with WorkerClient() as w:                                   # doctest: +SKIP
    ...     w.request("peak", provider="cpu", precision="fp32", threads=2, n=512, reps=3)
    """

    def __init__(self, env: dict | None = None):
        # stderr goes to a file, read back only to explain a failure (library warnings are noise here).
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "toolchain.bench.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, text=True, bufsize=1, env=os.environ | (env or {}),
        )

    def request(self, cmd: str, **fields) -> dict:
        """Send one request and wait for its reply; raises WorkerDied if the process is gone."""
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd} | fields) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.proc.wait(timeout=30)
            raise WorkerDied(f"worker exited with code {self.proc.returncode}: {self.stderr_tail()}")
        return json.loads(line)

    def stderr_tail(self, lines: int = 3) -> str:
        self.log.seek(0)
        tail = [line.strip() for line in self.log.read().splitlines() if line.strip()][-lines:]
        return " | ".join(tail)[-400:] or "no output"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
