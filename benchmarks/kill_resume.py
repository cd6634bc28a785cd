"""A batch killed with SIGKILL at a random moment, then resumed: nothing lost, nothing twice.

The emulator runs in its own process (``python -m quickrouter_async.testing --port 0``),
the batch in another (``python -m quickrouter_async.cli batch``). The batch is killed
with SIGKILL at a random moment, then the same command is run again. Afterwards the
emulator's own list of predictions (``GET /v1/predictions``, every page) must hold
exactly one prediction per input, ``results.jsonl`` exactly one line per input, and every
file it names must be on disk::

    python benchmarks/kill_resume.py --inputs 300 --seed 1

Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from _common import ROOT, EmulatorCommand

API_KEY = "kill-resume-key"
MODEL = "google/imagen-4"


class Emulator(EmulatorCommand):
    """The emulator in its own process, and what it holds."""

    def predictions(self) -> list[dict[str, Any]]:
        """Every prediction the emulator holds, following the cursor pages."""
        found: list[dict[str, Any]] = []
        url: str | None = f"{self.base_url}/v1/predictions"
        while url:
            request = urllib.request.Request(  # noqa: S310 (a loopback http URL)
                url, headers={"Authorization": f"Bearer {API_KEY}"}
            )
            with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
                page = json.load(answer)
            found.extend(page["results"])
            url = page.get("next")
        return found


def write_inputs(path: Path, count: int) -> None:
    """``count`` bare Imagen 4 inputs, each prompt unique (its number in it)."""
    ratios = ["1:1", "16:9", "9:16", "3:4", "4:3"]
    with path.open("w", encoding="utf-8") as handle:
        for number in range(count):
            prompt = f"kill-resume input {number}: a lighthouse, variation {number % 17}"
            payload = {"prompt": prompt, "aspect_ratio": ratios[number % len(ratios)]}
            handle.write(json.dumps(payload) + "\n")


def in_doubt(path: Path) -> list[str]:
    """The prompts of the inputs the journal has as ``submitting``."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT input FROM entries WHERE state = 'submitting'").fetchall()
    return [json.loads(row[0])["prompt"] for row in rows]


def journal_states(path: Path) -> dict[str, int]:
    """How many inputs the journal has in each state."""
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT state, count(*) FROM entries GROUP BY state").fetchall())


def run(arguments: argparse.Namespace) -> int:
    """Run the scenario; print the figures; return 0 if every check holds."""
    rng = random.Random(arguments.seed)
    work = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    source, out = work / "inputs.jsonl", work / "out"
    write_inputs(source, arguments.inputs)
    flags = ["--api-key", API_KEY, "--duration", arguments.duration, "--seed", str(arguments.seed)]
    # Every answer held back a little, so the kill often lands while creates are in flight.
    flags += ["--rate", "100", "--burst", "50", "--latency", str(arguments.latency)]
    if arguments.faults:
        # Creates committed on the server but answered late, broken or not at all: a
        # kill during one of those leaves an input "submitting" whose prediction exists.
        flags += ["--reset-after-create", "0.02", "--server-error-after-create", "0.02"]
        flags += ["--slow", "0.3", "--slow-seconds", "2", "--fault-endpoints", "create"]
    with Emulator(*flags) as emulator:
        environment = {
            **os.environ,
            "QUICKROUTER_BASE_URL": emulator.base_url,
            "QUICKROUTER_API_KEY": API_KEY,
        }
        command = [
            sys.executable,
            "-m",
            "quickrouter_async.cli",
            "batch",
            str(source),
            "--out",
            str(out),
            "--model",
            MODEL,
            "--concurrency",
            str(arguments.concurrency),
        ]
        started = time.monotonic()
        first = subprocess.Popen(command, env=environment, cwd=ROOT)
        kill_after = rng.uniform(*arguments.kill_between)
        try:
            first.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            first.send_signal(signal.SIGKILL)
            first.wait()
        killed_at = time.monotonic() - started
        killed = first.returncode == -signal.SIGKILL
        at_kill = journal_states(out / "journal.sqlite3")
        doubts = in_doubt(out / "journal.sqlite3")
        on_server = {str((p.get("input") or {}).get("prompt")) for p in emulator.predictions()}
        predictions_at_kill = len(on_server)
        print(
            f"first run: {'killed with SIGKILL' if killed else 'finished'} after {killed_at:.2f}s"
        )
        print(f"journal at the kill: {json.dumps(at_kill, sort_keys=True)}")
        print(f"predictions on the emulator at the kill: {predictions_at_kill}")
        print(
            f"inputs 'submitting' at the kill: {len(doubts)}, of which already created on "
            f"the server: {sum(prompt in on_server for prompt in doubts)} (to be found by lookup)"
        )

        resumed_started = time.monotonic()
        second = subprocess.run(command, env=environment, cwd=ROOT, check=False)
        print(
            f"resumed run: exit {second.returncode} after {time.monotonic() - resumed_started:.2f}s"
        )

        predictions = emulator.predictions()
    per_input = Counter(str((p.get("input") or {}).get("prompt")) for p in predictions)
    prompts = [json.loads(line)["prompt"] for line in source.read_text().splitlines()]
    counts = Counter(per_input[prompt] for prompt in prompts)
    strays = sum(1 for prompt in per_input if prompt not in set(prompts))
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    indices = Counter(result["index"] for result in results)
    files = [name for result in results for name in result["files"]]
    missing = [name for name in files if not (out / name).is_file()]
    succeeded = sum(result["status"] == "succeeded" for result in results)

    print(f"inputs: {len(prompts)}")
    print(f"predictions on the emulator: {len(predictions)} (strays: {strays})")
    print(
        "predictions per input: "
        + ", ".join(f"{n} prediction(s): {k} inputs" for n, k in sorted(counts.items()))
    )
    print(
        f"results.jsonl: {len(results)} lines, {len(indices)} distinct indices, "
        f"{succeeded} succeeded"
    )
    print(f"output files named: {len(files)}, on disk: {len(files) - len(missing)}")
    print(f"journal at the end: {json.dumps(journal_states(out / 'journal.sqlite3'))}")
    checks = {
        "exactly one prediction per input": counts == Counter({1: len(prompts)}) and not strays,
        "one result line per input": len(results) == len(prompts) == len(indices),
        "every output file on disk": not missing and len(files) >= succeeded > 0,
        "resumed run exit 0": second.returncode == 0,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    print(f"work folder: {work}")
    return 0 if all(checks.values()) else 1


def main() -> int:
    """Parse the flags and run the scenario."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", default="0.3,1.5", help="emulator seconds per prediction")
    parser.add_argument("--latency", type=float, default=0.05, help="emulator seconds per answer")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--kill-between", type=float, nargs=2, default=(1.0, 6.0), metavar=("MIN", "MAX")
    )
    parser.add_argument(
        "--faults", action="store_true", help="also drop 2%% of create answers after commit"
    )
    arguments = parser.parse_args()
    if arguments.seed is None:
        arguments.seed = random.SystemRandom().randrange(1_000_000)
    print(f"seed: {arguments.seed}")
    return run(arguments)


if __name__ == "__main__":
    sys.exit(main())
