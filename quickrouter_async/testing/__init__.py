"""A QuickRouter API emulator for tests: a real HTTP server on loopback.

Point any client at :attr:`Emulator.base_url`; predictions run on a simulated timeline,
Imagen 4 and Seedream 4 inputs are validated, output URLs serve real images, and
rate limits and faults can be injected::

    from quickrouter_async.testing import Emulator, Faults

    async with Emulator(duration=0.1, faults=Faults(throttle=0.1)) as emulator:
        ...  # emulator.base_url, emulator.api_key, emulator.predictions

Run it standalone with ``python -m quickrouter_async.testing --port 8080``.
"""

from ._emulator import Duration, DurationRange, Emulator
from ._options import FAULT_ENDPOINTS, Faults, RateLimit
from ._records import (
    TERMINAL_STATUSES,
    FileRequestRecord,
    PredictionRecord,
    Predictions,
    RequestRecord,
    Status,
)
from ._webhooks import WEBHOOK_EVENTS, WebhookDelivery

__all__ = [
    "FAULT_ENDPOINTS",
    "TERMINAL_STATUSES",
    "WEBHOOK_EVENTS",
    "Duration",
    "DurationRange",
    "Emulator",
    "Faults",
    "FileRequestRecord",
    "PredictionRecord",
    "Predictions",
    "RateLimit",
    "RequestRecord",
    "Status",
    "WebhookDelivery",
]
