"""Helpers shared by the benchmarks: the emulator in its own process, tables, machine facts.

The emulator runs in a child process so that the client's CPU time
(`time.process_time()` of the benchmark process) is the client's alone::

    with EmulatorProcess(duration=5.0, rate_limit={"rate": 20, "burst": 10}) as server:
        anyio.run(scenario, server.base_url, server.api_key)
        print(server.stats())  # what the server saw: requests and predictions

Run as a script (``python benchmarks/_common.py serve '{"duration": 1.0}'``) this module
is that child: it prints ``QUICKROUTER_BASE_URL=...`` and answers ``stats``, ``reset``
and ``quit`` lines on its standard input.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

API_KEY = "bench-key"
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})


def raise_open_files_limit(wanted: int = 65536) -> int:
    """Raise the soft limit of open files towards ``wanted``; return the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class EmulatorCommand:
    """``python -m quickrouter_async.testing --port 0 FLAGS`` in a child process.

    Started and stopped as a context manager (stopped with SIGINT, killed if it lingers);
    ``base_url`` is the address it printed.
    """

    def __init__(self, *flags: str) -> None:
        self.flags = flags
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "quickrouter_async.testing", "--port", "0", *self.flags],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path[1:]])},
        )
        for line in self._process.stdout or ():
            if line.startswith("QUICKROUTER_BASE_URL="):
                self.base_url = line.strip().split("=", 1)[1]
                return self
        self.__exit__(None, None, None)
        raise RuntimeError("the emulator did not start")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


class EmulatorProcess:
    """The emulator in a child process, started and stopped as a context manager."""

    def __init__(self, **options: Any) -> None:
        self.options = {"api_key": API_KEY, **options}
        self.api_key: str = self.options["api_key"]
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self._process = subprocess.Popen(
            [sys.executable, __file__, "serve", json.dumps(self.options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path[1:]])},
        )
        line = self._read()
        if not line.startswith("QUICKROUTER_BASE_URL="):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the emulator did not start: {line!r}")
        self.base_url = line.split("=", 1)[1]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                self._command("quit")
                process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        self._process = None

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError("the emulator process is not running")
        return process.stdin, process.stdout

    def _read(self) -> str:
        return self._pipes()[1].readline().strip()

    def _command(self, command: str) -> str:
        stdin, _ = self._pipes()
        stdin.write(command + "\n")
        stdin.flush()
        return "" if command == "quit" else self._read()

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self._process is None:
            raise RuntimeError("the emulator process is not running")
        return self._process.pid

    def stats(self) -> dict[str, Any]:
        """What the server saw since the last reset: requests and prediction statuses."""
        return dict(json.loads(self._command("stats")))

    def reset(self) -> None:
        """Forget the requests and predictions seen so far."""
        self._command("reset")


@contextlib.contextmanager
def separate_cores(server: EmulatorProcess) -> Iterator[str]:
    """Run the emulator on one core and this process on the others, then as before.

    Client CPU is measured with the server on another core, so that neither's time on a
    shared core (or its caches) is counted against the other; every contender is measured
    alike. Yields how the cores were split (``"not pinned"`` where the platform cannot
    pin, or has one core).
    """
    getter = getattr(os, "sched_getaffinity", None)
    setter = getattr(os, "sched_setaffinity", None)
    cores = sorted(getter(0)) if getter is not None else []
    if setter is None or len(cores) < 2:
        yield "not pinned"
        return
    setter(server.pid, {cores[-1]})
    setter(0, set(cores[:-1]))
    try:
        yield f"client on core(s) {', '.join(map(str, cores[:-1]))}, emulator on core {cores[-1]}"
    finally:
        setter(0, set(cores))
        with contextlib.suppress(OSError):
            setter(server.pid, set(cores))


# -- the child process ---------------------------------------------------------------------


def _field(record: Any, name: str) -> Any:
    value = record.get(name) if isinstance(record, dict) else getattr(record, name, None)
    return getattr(value, "value", value)


def _records(container: Any) -> list[Any]:
    return list(container.values()) if isinstance(container, dict) else list(container)


def server_stats(emulator: Any) -> dict[str, Any]:
    """Counts of the emulator's records: creates, polls, cancels, 429s, statuses."""
    requests = Counter()
    for record in _records(emulator.requests):
        method, path, status = (_field(record, n) for n in ("method", "path", "status"))
        path = str(path)
        if method == "POST" and path.endswith("/cancel"):
            kind = "cancel"
        elif method == "POST":
            kind = "create"
        elif path.rstrip("/").endswith("/v1/predictions"):
            kind = "list"
        else:
            kind = "get"
        requests[f"{kind} {status}"] += 1
    predictions = _records(emulator.predictions)
    statuses = Counter(str(_field(p, "status")) for p in predictions)
    copies = Counter(str(sorted(_field(p, "input").items())) for p in predictions)
    faults = Counter(
        fault
        for record in _records(emulator.requests)
        for fault in (_field(record, "fault") or "").split(",")
        if fault
    )
    deadlines = Counter(
        (getattr(p, "create_headers", None) or {}).get("cancel-after") for p in predictions
    )
    return {
        "requests": dict(requests),
        "creates": sum(v for k, v in requests.items() if k.startswith("create ")),
        "throttled": requests.get("create 429", 0),
        "total_requests": sum(requests.values()),
        "predictions": sum(statuses.values()),
        "statuses": dict(statuses),
        "running": sum(v for k, v in statuses.items() if k not in TERMINAL),
        "by_status": dict(statuses),
        "inputs_created_twice": sum(1 for count in copies.values() if count > 1),
        "faults": dict(faults),
        "cancel_after": {str(k): v for k, v in deadlines.items()},
    }


def _clear(container: Any) -> None:
    container.clear()


async def _serve(options: dict[str, Any]) -> None:
    import anyio  # noqa: PLC0415 (the parent process does not need it at import)
    from quickrouter_async import testing  # noqa: PLC0415

    if isinstance(options.get("duration"), list):  # JSON has no tuples
        options["duration"] = tuple(options["duration"])
    limit = options.pop("rate_limit", None)
    if limit is not None:
        options["rate_limit"] = testing.RateLimit(**limit)
    faults = options.pop("faults", None)
    if faults is not None:  # one set or several, as dicts
        sets = [faults] if isinstance(faults, dict) else faults
        options["faults"] = [testing.Faults(**fault) for fault in sets]
    async with testing.Emulator(**options) as emulator:
        print(f"QUICKROUTER_BASE_URL={emulator.base_url}", flush=True)
        while True:
            line = (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()
            if line in {"", "quit"}:
                return
            if line == "stats":
                print(json.dumps(server_stats(emulator)), flush=True)
            elif line == "reset":
                _clear(emulator.requests)
                _clear(emulator.predictions)
                print("ok", flush=True)


# -- reporting ------------------------------------------------------------------------------


def versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones left out)."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare figures: cores, CPU, Python, versions."""
    import quickrouter_async  # noqa: PLC0415

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "quickrouter_async": quickrouter_async.__version__,
        **versions("aiohttp", "anyio", "replicate", "httpx"),
    }


def markdown_table(rows: Sequence[dict[str, Any]], columns: Iterable[str]) -> str:
    """Rows as a Markdown table with the given columns (floats to 3 significant digits)."""
    names = list(columns)

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]
    lines += ["| " + " | ".join(cell(row.get(name)) for name in names) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        sys.exit("usage: python benchmarks/_common.py serve '{\"duration\": 1.0}'")
    import anyio

    raise_open_files_limit()
    anyio.run(_serve, json.loads(sys.argv[2]))
