"""`QuickRouter`: the async session manager and its public methods."""

from __future__ import annotations

import functools
import math
import time
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote, urlencode

from ._config import (
    Duration,
    PollPolicy,
    RetryPolicy,
    Timeouts,
    resolve_api_key,
    resolve_base_url,
    to_seconds,
)
from ._create import build_create, send_create
from ._errors import AuthenticationError, InputError, WaitTimeout
from ._fanout import Run
from ._files import DEFAULT_MAX_BYTES, download_outputs, prediction_of
from ._models import Outcome, Prediction
from ._polling import Push, Schedule, cancel_quietly, raise_for_outcome, wait_for, watch
from ._ratelimit import RateLimiter
from ._runmany import RunMany, check_inputs, concurrency_of
from ._serde import parse_page, parse_prediction
from ._transport import Transport
from ._version import __version__

if TYPE_CHECKING:
    import datetime as dt
    import os
    from collections.abc import AsyncIterator, Mapping
    from pathlib import Path
    from types import TracebackType

    import aiohttp

    from ._fanout import Inputs, InputT, ProgressCallback
    from ._inputs import ModelInput
    from ._ratelimit import CreateLimiter

__all__ = ["QuickRouter"]

DEFAULT_MAX_CONCURRENCY = 64
# Connections beyond the in-flight predictions, for cancels and lookups.
_SPARE_CONNECTIONS = 8


class QuickRouter:
    """An async client for QuickRouter's Replicate-compatible prediction API.

    It owns one `aiohttp.ClientSession` (or borrows the one passed in, and never closes
    it), is an async context manager, and is safe to share between the tasks of one
    event loop.

    Args:
        api_key: the API key; defaults to ``QUICKROUTER_API_KEY``.
        base_url: defaults to ``QUICKROUTER_BASE_URL``, else
            ``https://api.quickrouter.ai/replicate``. Plain ``http://`` is refused for
            any host but loopback unless ``allow_http=True``.
        timeout: the limit for one HTTP request: seconds, or a `Timeouts`.
        retry: how requests that failed for a passing reason are retried.
        poll: how waits learn that a prediction finished.
        max_concurrency: predictions `run_many` keeps in flight by default.
        rate_limit: creates per second; None finds the server's limit by itself.
        rate_limiter: paces the creates instead of this client's own limiter, e.g. a
            `RedisRateLimiter` shared by several processes (``rate_limit`` then fixes
            the shared rate); closed with the client.
        session: an aiohttp session to borrow instead of creating one.
        allow_http: allow a plain ``http://`` base URL on a non-loopback host.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: Timeouts | Duration | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        rate_limit: float | None = None,
        session: aiohttp.ClientSession | None = None,
        allow_http: bool = False,
        rate_limiter: CreateLimiter | None = None,
    ) -> None:
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise InputError("max_concurrency must be an integer", field="max_concurrency")
        if max_concurrency < 1:
            raise InputError("max_concurrency must be at least 1", field="max_concurrency")
        if rate_limit is not None and not rate_limit > 0:
            raise InputError("rate_limit must be positive creates per second", field="rate_limit")
        self.base_url = resolve_base_url(base_url, allow_http=allow_http)
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self.poll = poll or PollPolicy()
        key = resolve_api_key(api_key)
        self._has_key = bool(key)  # an empty key is no key
        self._transport = Transport(
            base_url=self.base_url,
            api_key=key,
            timeouts=Timeouts.coerce(timeout),
            retry=retry or RetryPolicy(),
            session=session,
            connections=max_concurrency + _SPARE_CONNECTIONS,
            user_agent=f"quickrouter-async/{__version__}",
        )
        max_pause = self._transport.retry.max_retry_after
        if rate_limiter is None:
            rate_limiter = RateLimiter(rate_limit, max_pause=max_pause)
        elif (configure := getattr(rate_limiter, "configure", None)) is not None:
            configure(rate=rate_limit, max_pause=max_pause)
        self._transport.create_limiter = rate_limiter
        self._schedule = Schedule(self.poll)
        # Set by a `WebhookReceiver`: waits then learn from webhooks instead of polls.
        self._push: Push | None = None

    def __repr__(self) -> str:
        key = "set" if self._has_key else "missing"
        return f"<QuickRouter base_url={self.base_url!r} api_key={key}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session, unless it was borrowed, and the rate limiter's connections."""
        await self._transport.aclose()
        if (close := getattr(self._transport.create_limiter, "aclose", None)) is not None:
            await close()

    @property
    def timeouts(self) -> Timeouts:
        """The per-request time limits."""
        return self._transport.timeouts

    def _require_key(self) -> None:
        if not self._has_key:
            raise AuthenticationError(
                "no API key: pass api_key= or set QUICKROUTER_API_KEY", status=401
            )

    # -- predictions -------------------------------------------------------------------

    async def create(
        self,
        model_or_input: str | ModelInput,
        input: Mapping[str, Any] | ModelInput | None = None,  # noqa: A002
        *,
        wait: bool | float | None = None,
        webhook: str | None = None,
        webhook_events_filter: list[str] | tuple[str, ...] | None = None,
        cancel_after: float | dt.timedelta | str | None = None,
    ) -> Prediction:
        """Create a prediction.

        Args:
            model_or_input: a typed input (`Imagen4Input`, `Seedream4Input`), or a model
                as ``owner/name`` (or ``owner/name:version``) followed by its input.
            input: the input when a model name comes first: a mapping or a typed input.
            wait: hold the request open until the prediction finishes, up to this many
                seconds (1-60; True means 60), with ``Prefer: wait``.
            webhook: an HTTPS URL the server calls as the prediction progresses.
            webhook_events_filter: which events to send: ``start``, ``output``,
                ``logs``, ``completed``.
            cancel_after: a deadline after which the server cancels the prediction.

        Returns:
            The prediction as the server answered: terminal when it finished within
            ``wait``, else ``starting`` or ``processing``.

        Raises:
            InputError: the arguments are invalid; nothing was sent.
            APIError: the server refused the create.
            CreateInDoubt: the create may have happened and could not be looked up.
        """
        request = build_create(
            model_or_input,
            input,
            wait=wait,
            webhook=webhook,
            webhook_events_filter=webhook_events_filter,
            cancel_after=cancel_after,
        )
        self._require_key()
        return await send_create(self._transport, request)

    def _prediction_url(self, prediction_id: str) -> str:
        # Ids are letters and digits: quoted only when they are not.
        plain = prediction_id.isascii() and prediction_id.isalnum()
        segment = prediction_id if plain else quote(prediction_id, safe="")
        return self._transport.url(f"/v1/predictions/{segment}")

    async def get(self, prediction: Prediction | str) -> Prediction:
        """Fetch a prediction by id (or refresh a `Prediction`)."""
        self._require_key()
        answer = await self._transport.request("GET", self._prediction_url(_id_of(prediction)))
        return parse_prediction(answer.data)

    async def cancel(self, prediction: Prediction | str) -> Prediction:
        """Cancel a prediction; a terminal one is returned unchanged by the server."""
        self._require_key()
        url = self._prediction_url(_id_of(prediction)) + "/cancel"
        return parse_prediction((await self._transport.request("POST", url)).data)

    async def list_predictions(
        self,
        *,
        created_after: dt.datetime | None = None,
        created_before: dt.datetime | None = None,
    ) -> AsyncIterator[Prediction]:
        """Yield the account's predictions, newest first, following the cursor pages."""
        self._require_key()
        query = {
            key: value.isoformat()
            for key, value in (("created_after", created_after), ("created_before", created_before))
            if value is not None
        }
        url: str | None = self._transport.url("/v1/predictions")
        if query:
            url = f"{url}?{urlencode(query)}"
        while url is not None:
            page = parse_page((await self._transport.request("GET", url)).data)
            for prediction in page.results:
                yield prediction
            url = self._transport.cursor_url(page.next)

    # -- waiting -----------------------------------------------------------------------

    async def _poll(self, prediction_id: str) -> tuple[Prediction, Mapping[str, str]]:
        """Fetch a prediction for a wait, with the answer's headers (``Retry-After``)."""
        answer = await self._transport.request("GET", self._prediction_url(prediction_id))
        return parse_prediction(answer.data), answer.headers

    async def _give_up(self, prediction_id: str) -> Prediction | None:
        """Cancel a prediction nobody waits for any more: shielded, bounded in time."""
        return await cancel_quietly(self.cancel, prediction_id)

    def _start(self, prediction: Prediction | str) -> Prediction | str:
        self._require_key()
        return prediction if isinstance(prediction, Prediction) else _id_of(prediction)

    async def watch(self, prediction: Prediction | str) -> AsyncIterator[Prediction]:
        """Yield the prediction each time its status, output or logs change.

        The first item is the prediction as given (fetched, for an id); the iterator
        ends after a terminal one. Polls follow the client's `PollPolicy`: by default a
        schedule learned per model, dense around the time its predictions usually
        finish and sparse elsewhere.
        """
        start = self._start(prediction)
        async for snapshot in watch(start, self._poll, self._schedule, push=self._push):
            yield snapshot

    async def wait(
        self,
        prediction: Prediction | str,
        *,
        timeout: Duration | None = None,
        cancel_on_exit: bool = False,
    ) -> Prediction:
        """Wait until the prediction is terminal and return it.

        Args:
            prediction: a `Prediction` or an id.
            timeout: the deadline for the whole wait, in seconds or a `timedelta`.
            cancel_on_exit: cancel the prediction on the server if the wait ends without
                a terminal prediction (deadline passed, task cancelled, an error).

        Raises:
            WaitTimeout: the deadline passed; it carries the last prediction seen (as
                the cancel answered, with ``cancel_on_exit``).
        """
        seconds = to_seconds(timeout, name="timeout")
        deadline = math.inf if seconds is None else time.monotonic() + seconds
        return await wait_for(
            self._start(prediction),
            self._poll,
            self._schedule,
            transport=self._transport,
            deadline=deadline,
            give_up=self._give_up if cancel_on_exit else None,
            push=self._push,
        )

    async def run(
        self,
        model_or_input: str | ModelInput,
        input: Mapping[str, Any] | ModelInput | None = None,  # noqa: A002
        *,
        timeout: Duration | None = None,
        cancel_on_exit: bool = True,
        webhook: str | None = None,
        webhook_events_filter: list[str] | tuple[str, ...] | None = None,
    ) -> Prediction:
        """Create a prediction and wait for it to succeed.

        The create holds the request open (``Prefer: wait``, up to `PollPolicy.sync_wait`
        and never past the deadline), so a prediction that finishes within it costs one
        request; otherwise, or if the server ignores the header, it is polled. When the
        caller gives up (the deadline, a cancelled task or task group), the prediction
        is canceled on the server, even one whose create had not answered yet.

        Raises:
            PredictionFailed: the prediction failed.
            PredictionCanceled: the prediction was canceled or aborted.
            WaitTimeout: ``timeout`` passed; the prediction was canceled on the server
                unless ``cancel_on_exit=False``.
        """
        seconds = to_seconds(timeout, name="timeout")
        deadline = math.inf if seconds is None else time.monotonic() + seconds
        request = build_create(
            model_or_input,
            input,
            wait=None,
            webhook=webhook,
            webhook_events_filter=webhook_events_filter,
            cancel_after=None,
        )
        self._require_key()
        try:
            done = await wait_for(
                request,
                self._poll,
                self._schedule,
                transport=self._transport,
                deadline=deadline,
                give_up=self._give_up if cancel_on_exit else None,
                push=self._push,
            )
        except WaitTimeout as exc:
            if cancel_on_exit and exc.prediction is not None:
                exc.args = (f"{exc.args[0]}; canceled on the server",)
            raise
        return raise_for_outcome(done)

    def run_many(
        self,
        inputs: Inputs[InputT],
        *,
        concurrency: int | None = None,
        ordered: bool = False,
        timeout: Duration | None = None,
        progress: ProgressCallback | None = None,
    ) -> RunMany[InputT]:
        """Run many predictions at once, yielding an `Outcome` for each input.

        Inputs are typed inputs or ``(model, input)`` pairs, from any iterable or async
        iterable; they are pulled one at a time as slots free up, so a generator of a
        million inputs is never held in memory. At most ``concurrency`` inputs are in
        flight; creates are paced by the client's rate limit (found from the server's 429
        answers unless ``rate_limit=`` was given). Every input gets exactly one outcome:
        an invalid input, a failed prediction or an HTTP error is its ``error``.

        The result is an async iterator and an async context manager; leaving the
        ``async with`` block (or a cancelled or broken-off iteration) cancels on the
        server every prediction still running::

            async with client.run_many(inputs, concurrency=32) as outcomes:
                async for outcome in outcomes:
                    print(outcome.index, outcome.ok)

        Args:
            inputs: typed inputs or ``(model, input)`` pairs, sync or async iterable.
            concurrency: inputs in flight at once; defaults to ``max_concurrency``.
            ordered: yield in input order (at most ``2 * concurrency`` outcomes wait).
            timeout: the deadline of each prediction, in seconds; past it the
                prediction is canceled and its outcome has a `WaitTimeout`.
            progress: called with a `Progress` snapshot each time an input starts or
                finishes (also readable as the result's ``progress``).

        Raises:
            InputError: ``inputs`` is not an iterable, or ``concurrency`` or ``timeout``
                is invalid.
            AuthenticationError: the client has no API key.
        """
        check_inputs(inputs)
        limit = concurrency_of(concurrency, self.max_concurrency)
        seconds = to_seconds(timeout, name="timeout")
        self._require_key()
        self._transport.ensure_connections(limit + _SPARE_CONNECTIONS)
        return RunMany(
            functools.partial(
                Run,
                self,
                self._transport,
                inputs,
                concurrency=limit,
                ordered=ordered,
                timeout=seconds,
                progress=progress,
            )
        )

    # -- outputs -----------------------------------------------------------------------

    async def download(
        self,
        target: Prediction | Outcome[Any] | str,
        dest: str | os.PathLike[str],
        *,
        concurrency: int = 4,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> list[Path]:
        """Stream every output file of a prediction into ``dest`` and return the paths.

        Files are named ``{prediction id}-{index}.{ext}``, the extension from the content
        type; each is written to a temporary file and renamed when complete. ``data:``
        URIs are decoded. File hosts never receive the API key.

        Args:
            target: a `Prediction`, an `Outcome`, or a prediction id (fetched first).
            dest: the folder, created if missing.
            concurrency: files downloaded at once.
            max_bytes: the largest file accepted.

        Raises:
            InputError: the target has no prediction.
            ProtocolError: an output is not a URL, or is larger than ``max_bytes``.
            TransportError: a file could not be fetched after retries.
        """
        if isinstance(target, str):
            prediction = await self.get(target)
        else:
            prediction = prediction_of(target)
        return await download_outputs(
            self._transport, prediction, dest, concurrency=concurrency, max_bytes=max_bytes
        )


def _id_of(prediction: Prediction | str) -> str:
    if isinstance(prediction, Prediction):
        return prediction.id
    value: object = prediction
    if isinstance(value, str) and value.strip():
        return value
    raise InputError(f"expected a Prediction or an id, got {prediction!r}", field="prediction")
