"""`QuickRouter`: the async session manager and its public methods."""

from __future__ import annotations

import functools
import math
import time
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import urlencode

import anyio

from ._capabilities import Capabilities, CapabilityBook
from ._clock import ServerClock
from ._config import (
    Duration,
    PollPolicy,
    RetryPolicy,
    Timeouts,
    resolve_api_key,
    resolve_base_url,
    to_seconds,
)
from ._create import Creates
from ._errors import APIError, AuthenticationError, InputError, NotFoundError, short_repr
from ._fanout import Run
from ._files import DEFAULT_MAX_BYTES, download_outputs, prediction_of
from ._interrupt import interruptible
from ._local_files import read_local_files
from ._models import Outcome, Prediction
from ._output_hosts import output_hosts_of
from ._polling import (
    Push,
    Schedule,
    cancel_quietly,
    raise_for_outcome,
    retry_after,
    wait_for,
    watch,
)
from ._progressbar import progress_display
from ._ratelimit import RateLimiter
from ._request import build_create, prediction_path
from ._runmany import RunMany, check_inputs, concurrency_of
from ._serde import parse_page, parse_prediction
from ._transport import Transport
from ._version import __version__

if TYPE_CHECKING:
    import datetime as dt
    import os
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
    from pathlib import Path
    from types import TracebackType

    import aiohttp

    from ._fanout import Inputs, InputT, ProgressCallback
    from ._inputs import ModelInput
    from ._ratelimit import CreateLimiter

__all__ = ["QuickRouter"]

DEFAULT_MAX_CONCURRENCY: Final = 64
# The default deadline of `run` and of each prediction of `run_many`: the API's own limit
# for a running prediction (API.md §1), so it never cuts a real one short.
DEFAULT_RUN_TIMEOUT: Final = 1800.0
# Connections beyond the in-flight predictions, for cancels and lookups.
_SPARE_CONNECTIONS: Final = 8
# Answers that say a route does not exist on the server (a gateway that does not relay it).
_NO_ROUTE: Final = frozenset({404, 405})


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
            the shared rate); it is awaited before each create and told of each answer
            (see `CreateLimiter`), and closed with the client.
        capabilities: what the server is known to offer beyond create and get (list,
            cancel, ``Prefer: wait``, ``ratelimit-*`` headers); anything left None is
            learned when first needed. See `Capabilities`.
        session: an aiohttp session to borrow instead of creating one.
        allow_http: allow a plain ``http://`` base URL on a non-loopback host.
        output_hosts: the only hosts `download` fetches output files from, e.g.
            ``("replicate.delivery", "*.replicate.delivery")`` (``*.`` for subdomains);
            None (the default) for any host. Link-local and loopback addresses are
            refused either way, loopback unless the API itself is on loopback.
        sleep: how the client waits before a retry (``anyio.sleep``); tests pass one
            that records the waits, or skips them.
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
        rate_limiter: CreateLimiter | None = None,
        capabilities: Capabilities | None = None,
        session: aiohttp.ClientSession | None = None,
        allow_http: bool = False,
        output_hosts: Iterable[str] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise InputError("max_concurrency must be an integer", field="max_concurrency")
        if max_concurrency < 1:
            raise InputError("max_concurrency must be at least 1", field="max_concurrency")
        if rate_limit is not None and not rate_limit > 0:
            raise InputError("rate_limit must be positive creates per second", field="rate_limit")
        self.base_url = resolve_base_url(base_url, allow_http=allow_http)
        self.output_hosts = output_hosts_of(output_hosts)
        self.output_hosts = output_hosts_of(output_hosts)
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self.poll = poll or PollPolicy()
        if capabilities is not None and not isinstance(capabilities, Capabilities):
            raise InputError("capabilities must be a qr.Capabilities", field="capabilities")
        key = resolve_api_key(api_key)
        self._has_key = bool(key)  # an empty key is no key
        retry = retry or RetryPolicy()
        clock = ServerClock()
        self._transport = Transport(
            base_url=self.base_url,
            api_key=key,
            timeouts=Timeouts.coerce(timeout),
            retry=retry,
            session=session,
            connections=max_concurrency + _SPARE_CONNECTIONS,
            user_agent=f"quickrouter-async/{__version__}",
            clock=clock,
            sleep=anyio.sleep if sleep is None else sleep,
        )
        max_pause = retry.max_retry_after
        if rate_limiter is None:
            rate_limiter = RateLimiter(rate_limit, max_pause=max_pause)
        elif (configure := getattr(rate_limiter, "configure", None)) is not None:
            configure(rate=rate_limit, max_pause=max_pause)
        self._capabilities = CapabilityBook(capabilities)
        self._creates = Creates(
            self._transport,
            limiter=rate_limiter,
            capabilities=self._capabilities,
            listing=self._created_since,
            cancel=self._cancel_quietly,
        )
        self._schedule = Schedule(self.poll, clock=clock)
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
        """Close the client: settle the creates its callers gave up on, then close the
        HTTP session (unless it was borrowed) and the rate limiter's connections.

        A create whose caller left before it answered is still awaited (at most its own
        timeouts, and never more than a minute and a little), so that the prediction it
        made can be canceled; any left unanswered are logged.
        """
        await self._creates.aclose()
        await self._transport.aclose()
        if (close := getattr(self._creates.limiter, "aclose", None)) is not None:
            await close()

    @property
    def timeouts(self) -> Timeouts:
        """The per-request time limits."""
        return self._transport.timeouts

    @property
    def capabilities(self) -> Capabilities:
        """What the server offers beyond create and get, as far as this client knows."""
        return self._capabilities.snapshot()

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
        model_or_input, input = await read_local_files(model_or_input, input)  # noqa: A001
        request = build_create(
            model_or_input,
            input,
            wait=wait,
            webhook=webhook,
            webhook_events_filter=webhook_events_filter,
            cancel_after=cancel_after,
        )
        self._require_key()
        return await self._creates.create(request)

    def _prediction_url(self, prediction_id: str) -> str:
        return self._transport.url(prediction_path(prediction_id))

    async def get(self, prediction: Prediction | str) -> Prediction:
        """Fetch a prediction by id (or refresh a `Prediction`)."""
        url = self._prediction_url(_id_of(prediction))
        self._require_key()
        answer = await self._transport.request("GET", url)
        return parse_prediction(answer.data)

    async def cancel(self, prediction: Prediction | str) -> Prediction:
        """Cancel a prediction; a terminal one is returned unchanged by the server.

        Raises:
            NotFoundError: no such prediction, or the server has no cancel route (then
                `capabilities` says so, and the client stops canceling by itself).
        """
        prediction_id = _id_of(prediction)
        url = self._prediction_url(prediction_id) + "/cancel"
        self._require_key()
        try:
            answer = await self._transport.request("POST", url)
        except APIError as exc:
            if exc.status in _NO_ROUTE and self._capabilities.cancel is not False:
                await self._check_cancel_route(prediction_id, exc)
            raise
        self._capabilities.learn("cancel", present=True)
        return parse_prediction(answer.data)

    async def _check_cancel_route(self, prediction_id: str, error: APIError) -> None:
        """A 404 to a cancel: no such prediction, or no such route? Ask for the prediction."""
        if error.status == 404:
            try:
                await self.get(prediction_id)
            except NotFoundError:
                return  # the prediction is what is missing
        self._capabilities.learn("cancel", present=False, evidence=f"{error.status} to a cancel")

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
            try:
                answer = await self._transport.request("GET", url)
            except APIError as exc:
                if exc.status in _NO_ROUTE:
                    self._capabilities.learn(
                        "list_predictions", present=False, evidence=f"{exc.status} to a list"
                    )
                raise
            self._capabilities.learn("list_predictions", present=True)
            page = parse_page(answer.data)
            for prediction in page.results:
                yield prediction
            url = self._transport.cursor_url(page.next)

    def _created_since(self, since: dt.datetime) -> AsyncIterator[Prediction]:
        """The predictions created after ``since``, newest first (for lookups)."""
        return self.list_predictions(created_after=since)

    # -- waiting -----------------------------------------------------------------------

    async def _poll(self, prediction_id: str) -> tuple[Prediction, float | None]:
        """Fetch a prediction for a wait, with the wait its answer asks for, if any."""
        answer = await self._transport.request("GET", self._prediction_url(prediction_id))
        return parse_prediction(answer.data), retry_after(answer.headers)

    async def _give_up(self, prediction_id: str) -> Prediction | str:
        """Cancel a prediction nobody waits for any more: shielded, bounded in time.

        Returns:
            The prediction as the cancel answered, or why it could not be canceled.
        """
        if self._capabilities.cancel is not False:
            answer = await cancel_quietly(self.cancel, prediction_id)
            if answer is not None:
                return answer
        if self._capabilities.cancel is False:
            return "the server has no cancel route"
        return "canceling it on the server failed"

    async def _cancel_quietly(self, prediction_id: str) -> Prediction | None:
        """Cancel a prediction a create left behind, if the server can; None if not."""
        answer = await self._give_up(prediction_id)
        return None if isinstance(answer, str) else answer

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

    @interruptible  # the stop button of a notebook ends the wait (_interrupt.py)
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
            creates=self._creates,
            deadline=deadline,
            timeout=seconds,
            give_up=self._give_up if cancel_on_exit else None,
            push=self._push,
        )

    @interruptible  # the stop button of a notebook ends the wait (_interrupt.py)
    async def run(
        self,
        model_or_input: str | ModelInput,
        input: Mapping[str, Any] | ModelInput | None = None,  # noqa: A002
        *,
        timeout: Duration | None = DEFAULT_RUN_TIMEOUT,
        cancel_on_exit: bool = True,
        webhook: str | None = None,
        webhook_events_filter: list[str] | tuple[str, ...] | None = None,
    ) -> Prediction:
        """Create a prediction and wait for it to succeed.

        The create holds the request open (``Prefer: wait``, as `PollPolicy.sync_wait`
        says and never past the deadline), so a prediction that finishes within it
        costs one request; otherwise, or if the server ignores the header, it is
        polled. The create carries the deadline as ``Cancel-After``, so the server stops
        the prediction by itself even where it cannot be told to. When the caller gives
        up (the deadline, a cancelled task or task group), the prediction is canceled on
        the server, even one whose create had not answered yet.

        Args:
            model_or_input: a typed input, or a model name followed by its input.
            input: the input when a model name comes first.
            timeout: the deadline of the whole call, in seconds or a `timedelta`: by
                default 30 minutes, the API's own limit for a prediction; None waits
                without one (and sends no ``Cancel-After``). Not to be confused with
                ``QuickRouter(timeout=)``, the limit of each HTTP request.
            cancel_on_exit: cancel the prediction on the server when the call ends
                without it (the deadline, a cancelled task, an error).
            webhook: an HTTPS URL the server calls as the prediction progresses.
            webhook_events_filter: which events to send.

        Raises:
            PredictionFailed: the prediction failed.
            PredictionCanceled: the prediction was canceled or aborted.
            WaitTimeout: ``timeout`` passed; its message says whether the prediction was
                canceled on the server.
        """
        seconds = to_seconds(timeout, name="timeout")
        deadline = math.inf if seconds is None else time.monotonic() + seconds
        creates = self._creates
        model_or_input, input = await read_local_files(model_or_input, input)  # noqa: A001
        request = build_create(
            model_or_input,
            input,
            wait=creates.sync_wait(self.poll.sync_wait, seconds),
            webhook=webhook,
            webhook_events_filter=webhook_events_filter,
            cancel_after=creates.cancel_after(seconds),
        )
        self._require_key()
        done = await wait_for(
            request,
            self._poll,
            self._schedule,
            creates=creates,
            deadline=deadline,
            timeout=seconds,
            give_up=self._give_up if cancel_on_exit else None,
            push=self._push,
        )
        return raise_for_outcome(done)

    def run_many(
        self,
        inputs: Inputs[InputT],
        *,
        concurrency: int | None = None,
        ordered: bool = False,
        timeout: Duration | None = DEFAULT_RUN_TIMEOUT,
        progress: ProgressCallback | bool | None = None,
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
            timeout: the deadline of each prediction, in seconds (by default 30
                minutes, as `run`); past it the prediction is canceled and its outcome
                has a `WaitTimeout`. Each create carries it as ``Cancel-After``.
            progress: called with a `Progress` snapshot each time an input starts or
                finishes (also readable as the result's ``progress``); True draws a
                progress bar (``tqdm.auto``, the ``progress`` extra) of finished inputs,
                out of ``len(inputs)`` when the inputs have a length.

        Raises:
            InputError: ``inputs`` is not an iterable, or ``concurrency``, ``timeout`` or
                ``progress`` is invalid.
            AuthenticationError: the client has no API key.
            ImportError: ``progress=True`` and tqdm is not installed.
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
                self._creates,
                inputs,
                concurrency=limit,
                ordered=ordered,
                timeout=seconds,
                progress=progress_display(progress=progress, inputs=inputs),
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
        output_hosts: Iterable[str] | None = None,
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
            output_hosts: the only hosts files are fetched from, for this call;
                defaults to the client's ``output_hosts``.

        Raises:
            InputError: the target has no prediction.
            OutputURLRefused: an output's host or address may not be reached.
            DownloadError: a file could not be saved (full disk, permissions...).
            ProtocolError: an output is not a URL, or is larger than ``max_bytes``.
            TransportError: a file could not be fetched after retries.
        """
        hosts = self.output_hosts if output_hosts is None else output_hosts_of(output_hosts)
        if isinstance(target, str):
            prediction = await self.get(target)
        else:
            prediction = prediction_of(target)
        return await download_outputs(
            self._transport,
            prediction,
            dest,
            concurrency=concurrency,
            max_bytes=max_bytes,
            output_hosts=hosts,
        )


def _id_of(prediction: Prediction | str) -> str:
    if isinstance(prediction, Prediction):
        return prediction.id
    value: object = prediction
    if isinstance(value, str) and value.strip():
        return value
    raise InputError(
        f"expected a Prediction or an id, got {short_repr(prediction)}", field="prediction"
    )
