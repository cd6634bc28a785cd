"""Every Python example in the docs and the README runs, against the emulator.

The ```` ```python ```` blocks of one page run in order in one namespace, like the cells of
a notebook: top-level ``await`` works, and ``QUICKROUTER_API_KEY`` /
``QUICKROUTER_BASE_URL`` point ``qr.QuickRouter()`` at an emulator. A few names are
there before the first block, for fragments that continue an earlier example:

- ``client``: an open client (put back after a block that closes its own);
- ``prompts``: a fresh generator of three typed inputs before each block;
- ``enough``: a predicate true for the first outcome it sees.

A block preceded by ``<!-- docs-test: skip -->`` is shown but not run (reason beside it).
A block that calls ``asyncio.run`` runs in a worker thread, with its own event loop.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import quickrouter_async as qr
from quickrouter_async.testing import Emulator

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
BLOCK = re.compile(
    r"(?P<skip><!-- docs-test: skip[^>]*-->\s*\n)?^```python[^\n]*\n(?P<code>.*?)^```",
    re.MULTILINE | re.DOTALL,
)


def blocks(page: Path) -> list[tuple[int, str]]:
    """The runnable Python blocks of a page, with the line each starts on."""
    text = page.read_text()
    return [
        (text.count("\n", 0, match.start("code")) + 1, match["code"])
        for match in BLOCK.finditer(text)
        if not match["skip"]
    ]


def test_the_block_pattern_finds_and_skips_blocks() -> None:
    sample = (
        "text\n```python\nx = 1\n```\n<!-- docs-test: skip (needs a server) -->\n"
        "```python\nraise SystemExit\n```\n```bash\nls\n```\n"
    )
    assert [code for _, code in _parse(sample)] == ["x = 1\n"]


def _parse(text: str) -> list[tuple[int, str]]:
    return [(0, m["code"]) for m in BLOCK.finditer(text) if not m["skip"]]


def _typed_prompts() -> Iterator[qr.Imagen4Input]:
    return (qr.Imagen4Input(prompt=f"docs example {number}") for number in range(3))


async def _run_block(code: str, namespace: dict[str, Any], where: str) -> None:
    compiled = compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if "asyncio.run(" in code:
        await anyio.to_thread.run_sync(exec, compiled, namespace)
        return
    result = eval(compiled, namespace)  # noqa: S307 (the project's own documentation)
    if result is not None:
        await result


@pytest.mark.parametrize(
    "page", [page for page in PAGES if blocks(page)], ids=lambda page: page.name
)
async def test_the_examples_of_a_page_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a lighthouse at dusk\na harbour at dawn\n")
    async with Emulator(duration=0.05, seed=7) as emulator:
        monkeypatch.setenv("QUICKROUTER_API_KEY", emulator.api_key)
        monkeypatch.setenv("QUICKROUTER_BASE_URL", emulator.base_url)
        fast = qr.PollPolicy(interval=0.02)
        async with qr.QuickRouter(poll=fast) as client:
            namespace: dict[str, Any] = {"__name__": "__docs__", "qr": qr}
            for line, code in blocks(page):
                namespace |= {
                    "client": client,
                    "prompts": _typed_prompts(),
                    "enough": lambda _outcome: True,
                }
                await _run_block(code, namespace, f"{page.name}:{line}")
