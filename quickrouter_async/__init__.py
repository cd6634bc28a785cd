"""quickrouter_async: an asyncio-first client for QuickRouter's Replicate-compatible API.

Typical use::

    import quickrouter_async as qr

    async with qr.QuickRouter() as client:
        prediction = await client.run(qr.Imagen4Input(prompt="a lighthouse at dusk"))
        print(prediction.output)
"""

from ._capabilities import Capabilities
from ._client import QuickRouter
from ._config import PollPolicy, RetryPolicy, Timeouts
from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    CreateInDoubt,
    DownloadError,
    InputError,
    InvalidInputError,
    NotFoundError,
    OutputURLRefused,
    PaymentRequiredError,
    PermissionDeniedError,
    PredictionCanceled,
    PredictionError,
    PredictionFailed,
    ProtocolError,
    QuickRouterError,
    RateLimitError,
    RequestTimeout,
    ServerError,
    TransportError,
    WaitTimeout,
    WebhookVerificationError,
)
from ._fanout import Progress
from ._gallery import Gallery, gallery
from ._inputs import Imagen4Input, ModelInput, Seedream4Input
from ._interrupt import cancel_on_interrupt
from ._models import Outcome, Prediction, PredictionPage, Status
from ._ratelimit import CreateLimiter
from ._receiver import WebhookReceiver
from ._redis import RedisRateLimiter
from ._version import __version__
from ._webhooks import verify_webhook

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "Capabilities",
    "CreateInDoubt",
    "CreateLimiter",
    "DownloadError",
    "Gallery",
    "Imagen4Input",
    "InputError",
    "InvalidInputError",
    "ModelInput",
    "NotFoundError",
    "Outcome",
    "OutputURLRefused",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "PollPolicy",
    "Prediction",
    "PredictionCanceled",
    "PredictionError",
    "PredictionFailed",
    "PredictionPage",
    "Progress",
    "ProtocolError",
    "QuickRouter",
    "QuickRouterError",
    "RateLimitError",
    "RedisRateLimiter",
    "RequestTimeout",
    "RetryPolicy",
    "Seedream4Input",
    "ServerError",
    "Status",
    "Timeouts",
    "TransportError",
    "WaitTimeout",
    "WebhookReceiver",
    "WebhookVerificationError",
    "__version__",
    "cancel_on_interrupt",
    "gallery",
    "verify_webhook",
]
