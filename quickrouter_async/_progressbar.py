"""``run_many(..., progress=True)``: a progress bar drawn by ``tqdm.auto``.

``tqdm.auto`` draws a widget in Jupyter (with ipywidgets) and a text bar anywhere else,
falling back to text in a notebook without ipywidgets; why tqdm and not rich is in
docs/design-decisions.md. The bar is fed the same `Progress` snapshots a ``progress=``
callback gets: finished inputs out of the inputs' ``len()`` when they have one, with the
counts beside it. It appears on the first snapshot and is closed when the call ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import TYPE_CHECKING, Any

from ._errors import InputError

if TYPE_CHECKING:
    from ._fanout import Progress, ProgressCallback

__all__ = ["ProgressBar", "close_progress", "progress_display"]

_INSTALL = "pip install 'quickrouter-async[progress]'"


class ProgressBar:
    """Draws `Progress` snapshots as a tqdm bar of finished inputs."""

    def __init__(self, total: int | None, tqdm: Callable[..., Any]) -> None:
        self.total = total
        self._tqdm = tqdm
        self._bar: Any = None

    def __call__(self, snapshot: Progress) -> None:
        bar = self._bar
        if bar is None:
            bar = self._bar = self._tqdm(total=self.total, desc="run_many", unit="input")
        counts = {
            "running": snapshot.running,
            "succeeded": snapshot.succeeded,
            "failed": snapshot.failed,
        }
        if snapshot.canceled:
            counts["canceled"] = snapshot.canceled
        if snapshot.throttled:
            counts["throttled"] = snapshot.throttled
        bar.set_postfix(counts, refresh=False)
        bar.update(snapshot.finished - bar.n)

    def close(self) -> None:
        """Close the bar (a notebook's widget shows whether every input finished)."""
        if self._bar is not None:
            self._bar.close()


def progress_display(
    *, progress: ProgressCallback | bool | None, inputs: object
) -> ProgressCallback | None:
    """The callback `run_many` reports to: the one given, a `ProgressBar`, or none.

    Raises:
        ImportError: ``progress=True`` and tqdm is not installed.
        InputError: ``progress`` is neither a bool, None nor a callable.
    """
    if progress is None or progress is False:
        return None
    if progress is True:
        try:
            from tqdm.auto import tqdm  # noqa: PLC0415 (an optional dependency)
        except ImportError as exc:
            raise ImportError(
                f"run_many(progress=True) draws its bar with tqdm: {_INSTALL}"
            ) from exc
        return ProgressBar(len(inputs) if isinstance(inputs, Sized) else None, tqdm)
    if callable(progress):
        return progress
    raise InputError(
        "progress must be True, False, None or a callable taking a Progress", field="progress"
    )


def close_progress(callback: ProgressCallback | None) -> None:
    """Close the bar `progress_display` made, if that is what ``callback`` is."""
    if isinstance(callback, ProgressBar):
        callback.close()
