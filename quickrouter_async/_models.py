"""Response models: `Prediction`, `Status`, `Outcome` and pages of predictions.

The models are plain frozen attrs classes; turning JSON into them is the converter's job
(`_serde.py`), which is lenient about missing and unknown fields.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from ._html import Budget, outcome_card, prediction_card, render_grid
from ._text import error_text, short_repr, shorten

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Outcome", "Prediction", "PredictionPage", "Status"]


class Status(enum.StrEnum):
    """The status of a prediction.

    An unknown status string (a newer server may add some) becomes a pseudo-member whose
    value is that string: it compares equal to it, is never terminal, and never crashes a
    wait; the wait simply goes on until its deadline.
    """

    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ABORTED = "aborted"

    @classmethod
    def _missing_(cls, value: object) -> Status | None:
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = "UNKNOWN"
        member._value_ = value
        return member

    @property
    def terminal(self) -> bool:
        """True for ``succeeded``, ``failed``, ``canceled`` and ``aborted``."""
        return self._value_ in _TERMINAL

    @property
    def known(self) -> bool:
        """False for a status string this version of the library does not know."""
        return self._name_ != "UNKNOWN"


# By value: a string's hash is cached, an enum member's is computed in Python.
_TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})


def _output_urls(output: object) -> list[str]:
    if isinstance(output, str):
        return [output]
    if isinstance(output, list | tuple):
        return [item for item in output if isinstance(item, str)]
    return []


@attrs.frozen(kw_only=True, repr=False)
class Prediction:
    """One prediction, as the API describes it.

    Only `id` and `status` are sure to be present; every other field is None when the
    server left it out. Fields this version does not know are kept in `extra`.

    Its repr shows the id, status, model, input, output and error, each cut short (an
    input or output may hold megabytes of ``data:`` URIs); in Jupyter it renders as a
    card with the output images (`_repr_html_`).
    """

    id: str
    status: Status
    model: str | None = None
    version: str | None = None
    input: dict[str, Any] | None = None
    output: Any = None
    logs: str | None = None
    error: str | None = None
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    data_removed: bool | None = None
    source: str | None = None
    metrics: dict[str, Any] | None = None
    urls: dict[str, str] | None = None
    deadline: dt.datetime | None = None
    deployment: str | None = None
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None
    extra: dict[str, Any] = attrs.field(factory=dict, repr=False)

    @property
    def terminal(self) -> bool:
        """True once the prediction can no longer change."""
        return self.status.terminal

    @property
    def succeeded(self) -> bool:
        """True if the prediction finished with status ``succeeded``."""
        return self.status is Status.SUCCEEDED

    @property
    def output_urls(self) -> list[str]:
        """The output as a list of URLs: a single string, a list, or nothing."""
        return _output_urls(self.output)

    @property
    def predict_time(self) -> float | None:
        """Seconds the model ran, from `metrics`, when the server reported it."""
        value = (self.metrics or {}).get("predict_time")
        return float(value) if isinstance(value, int | float) else None

    def __repr__(self) -> str:
        parts = [f"id={shorten(self.id, 80)!r}", f"status={self.status.value!r}"]
        parts.extend(
            f"{name}={short_repr(value)}"
            for name, value in (
                ("model", self.model),
                ("input", self.input),
                ("output", self.output),
                ("error", self.error),
            )
            if value is not None
        )
        return f"Prediction({', '.join(parts)})"

    def _repr_html_(self) -> str:
        """Render in Jupyter: a card with the status, prompt, any error and the images."""
        return render_grid([prediction_card(self, Budget())])


@attrs.frozen(repr=False)
class PredictionPage:
    """One page of `GET /predictions`: the results and the cursor URLs around them."""

    results: list[Prediction]
    next: str | None = None
    previous: str | None = None

    def __repr__(self) -> str:
        cursors = ", ".join(
            f"{name}={shorten(url, 120)!r}"
            for name, url in (("next", self.next), ("previous", self.previous))
            if url is not None
        )
        return f"PredictionPage({len(self.results)} predictions{', ' if cursors else ''}{cursors})"

    def _repr_html_(self) -> str:
        """Render in Jupyter: a card per prediction."""
        budget = Budget()
        more = "; more on the next page" if self.next else ""
        return render_grid(
            [prediction_card(prediction, budget) for prediction in self.results],
            footer=f"{len(self.results)} predictions{more}",
        )


InputT = TypeVar("InputT")


@attrs.frozen(repr=False)
class Outcome(Generic[InputT]):
    """What became of one input of `run_many`.

    Its repr is short whatever the input holds; in Jupyter it renders as a card.

    Attributes:
        index: the position of the input in the inputs, from 0.
        input: the input as it was given.
        prediction: the last prediction seen, or None if none was created.
        error: None on success; otherwise the error (a failed prediction gives
            `PredictionFailed`).
    """

    index: int
    input: InputT
    prediction: Prediction | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """True when the input's prediction succeeded."""
        return self.error is None

    def __repr__(self) -> str:
        prediction = self.prediction
        seen = (
            "None"
            if prediction is None
            else f"Prediction(id={shorten(prediction.id, 80)!r}, "
            f"status={prediction.status.value!r}, …)"
        )
        error = "None" if self.error is None else repr(error_text(self.error))
        return (
            f"Outcome(index={self.index}, ok={self.ok}, input={short_repr(self.input)}, "
            f"prediction={seen}, error={error})"
        )

    def _repr_html_(self) -> str:
        """Render in Jupyter: the card of its prediction, labelled with its index."""
        return render_grid([outcome_card(self, Budget())])


def merge_extra(known: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON object with the unknown fields put back next to the known ones."""
    return {**extra, **known}
