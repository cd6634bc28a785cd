"""A prediction record as the API shows it at a given moment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import attrs

from ._protocol import rfc3339
from ._records import TERMINAL_STATUSES

if TYPE_CHECKING:
    from ._records import PredictionRecord

REPLICATE_API: Final = "https://api.replicate.com/v1"
REPLICATE_WEB: Final = "https://replicate.com/p"
# Where file outputs appear when the emulator shows them early: near the end of the run.
EARLY_OUTPUT_FRACTION: Final = 0.9
_LOG_STEPS: Final = 4


@attrs.frozen(kw_only=True)
class RenderContext:
    """What rendering needs from the emulator's settings.

    Attributes:
        api_base: the emulator's base URL (``http://127.0.0.1:PORT/replicate``).
        files_origin: where output files are served (``http://127.0.0.1:PORT``).
        passthrough_urls: point ``urls.get``/``urls.cancel`` at api.replicate.com, as
            gateways that pass Replicate's JSON through do.
        early_output: show file outputs while still ``processing``, near the end.
        data_retention: seconds after completion when input, output and logs are
            removed (``None``: kept).
    """

    api_base: str
    files_origin: str
    passthrough_urls: bool = True
    early_output: bool = False
    data_retention: float | None = None


def output_at(record: PredictionRecord, *, early: bool) -> float | None:
    """When the output becomes visible, or ``None`` if the prediction will have none."""
    status, moment = record.outcome()
    if status != "succeeded":
        return None
    if early:
        return record.starts + EARLY_OUTPUT_FRACTION * (record.ends - record.starts)
    return moment


def ready_at(record: PredictionRecord, *, early: bool) -> float:
    """When a request held by ``Prefer: wait`` may be answered."""
    moment = record.outcome()[1]
    visible = output_at(record, early=early)
    return moment if visible is None else min(moment, visible)


def data_removed(record: PredictionRecord, now: float, context: RenderContext) -> bool:
    """Whether the retention period has passed, so input, output and logs are gone."""
    if context.data_retention is None:
        return False
    return now >= record.outcome()[1] + context.data_retention


def output_visible(record: PredictionRecord, now: float, context: RenderContext) -> bool:
    """Whether the output (and so its files) can be seen at ``now``."""
    visible = output_at(record, early=context.early_output)
    if visible is None or now < visible:
        return False
    return not data_removed(record, now, context)


def output_urls(record: PredictionRecord, context: RenderContext) -> list[str]:
    """The URLs of a prediction's output files."""
    plan = record.plan
    base = f"{context.files_origin}/files/{record.id}"
    return [f"{base}/out-{index}.{plan.extension}" for index in range(plan.count)]


def logs(record: PredictionRecord, now: float) -> str:
    """The log text at ``now``: it grows while the prediction runs."""
    if not record.started_by(now):
        return ""
    status, moment = record.outcome()
    plan = record.plan
    images = f"{plan.count} image" + ("s" if plan.count != 1 else "")
    lines = [
        f"Using seed: {record.seed}",
        f"Generating {images} with aspect ratio {plan.label} ({plan.width}x{plan.height})...",
    ]
    running = record.ends - record.starts
    elapsed = min(now, moment) - record.starts
    done = _LOG_STEPS if running <= 0 else min(_LOG_STEPS, int(elapsed / running * _LOG_STEPS))
    lines += [
        f"{step * 100 // _LOG_STEPS:3d}%|{'#' * step:<{_LOG_STEPS}}| {step}/{_LOG_STEPS}"
        for step in range(1, done + 1)
    ]
    if now >= moment and status == "succeeded":
        lines.append(f"Generated {images} in {moment - record.starts:.2f}sec")
    elif now >= moment and status == "failed":
        lines.append(str(record.failure))
    return "".join(line + "\n" for line in lines)


def _urls(record: PredictionRecord, context: RenderContext) -> dict[str, str]:
    api = REPLICATE_API if context.passthrough_urls else f"{context.api_base}/v1"
    get = f"{api}/predictions/{record.id}"
    return {"cancel": f"{get}/cancel", "get": get, "web": f"{REPLICATE_WEB}/{record.id}"}


def render(record: PredictionRecord, now: float, context: RenderContext) -> dict[str, Any]:
    """The prediction object at monotonic time ``now``."""
    status = record.status_at(now)
    _, moment = record.outcome()
    removed = data_removed(record, now, context)
    output: Any = None
    if output_visible(record, now, context):
        urls = output_urls(record, context)
        output = urls[0] if record.plan.single else urls
    body: dict[str, Any] = {
        "id": record.id,
        "model": record.model,
        "version": record.version,
        "input": {} if removed else record.input,
        "logs": "" if removed else logs(record, now),
        "output": output,
        "data_removed": removed,
        "error": record.failure if status == "failed" else None,
        "source": "api",
        "status": status,
        "created_at": rfc3339(record.created_ns),
    }
    if record.started_by(now):
        body["started_at"] = rfc3339(record.wall_ns(record.starts))
    if status in TERMINAL_STATUSES:
        body["completed_at"] = rfc3339(record.wall_ns(moment))
    body["urls"] = _urls(record, context)
    if status in TERMINAL_STATUSES:
        metrics: dict[str, Any] = {"total_time": round(moment - record.created, 6)}
        if record.started_by(now):
            metrics["predict_time"] = round(moment - record.starts, 6)
        if status == "succeeded":
            metrics["image_count"] = record.plan.count
        body["metrics"] = metrics
    if record.deadline is not None:
        body["deadline"] = rfc3339(record.wall_ns(record.deadline))
    if record.deployment is not None:
        body["deployment"] = record.deployment
    if record.webhook is not None:
        body["webhook"] = record.webhook
    if record.webhook_events_filter is not None:
        body["webhook_events_filter"] = record.webhook_events_filter
    return body
