"""What the server offers beyond creating and getting a prediction, as far as it is known.

QuickRouter documents two routes for Replicate models: create, and get by id. Replicate
itself also lists predictions, cancels them, holds a create open with ``Prefer: wait``
and sends ``ratelimit-*`` headers; a gateway may relay any of these, or none. The client
learns each one lazily, the first time it needs it, and does without what is absent:

- no list route: a create whose fate is unknown cannot be looked up, so it raises
  `CreateInDoubt` (or is sent again, with ``RetryPolicy(in_doubt="resend")``);
- no cancel route: predictions a caller gives up on keep running until their
  ``Cancel-After`` deadline, which creates with a deadline carry;
- ``Prefer: wait`` ignored: waits poll from the start;
- no ``ratelimit-*`` headers: the create rate is found from 429 answers alone.

A route answered 404 or 405 is absent. Each absence is logged once per client, at
WARNING for a route and INFO for a header, with what the client does instead.
"""

from __future__ import annotations

import logging
from typing import Final, Literal

import attrs

__all__ = ["Capabilities", "Capability", "CapabilityBook"]

logger = logging.getLogger(__name__)

_KNOWN: Final = attrs.validators.optional(attrs.validators.instance_of(bool))

Capability = Literal["list_predictions", "cancel", "sync_wait", "rate_limit_headers"]

_INSTEAD: Final[dict[str, tuple[int, str]]] = {
    "list_predictions": (
        logging.WARNING,
        (
            "the server has no list route (GET /v1/predictions): a create whose fate is unknown "
            "cannot be looked up, so it raises CreateInDoubt (RetryPolicy(in_doubt='resend') "
            "sends it again), and a caller that gives up during a create has its prediction "
            "canceled once the create answers"
        ),
    ),
    "cancel": (
        logging.WARNING,
        (
            "the server has no cancel route (POST /v1/predictions/{id}/cancel): predictions "
            "a caller gives up on are not canceled; those created with a deadline carry "
            "Cancel-After, so the server stops them then"
        ),
    ),
    "sync_wait": (
        logging.INFO,
        (
            "the server does not hold creates open (Prefer: wait is ignored): waits poll from "
            "the start"
        ),
    ),
    "rate_limit_headers": (
        logging.INFO,
        (
            "the server sends no ratelimit-* headers: the create rate is found from 429 "
            "answers alone"
        ),
    ),
}


@attrs.frozen(kw_only=True)
class Capabilities:
    """What the server offers beyond create and get-by-id: each True, False or None.

    None means not known yet: the client learns it the first time it needs it. Pass one
    to `QuickRouter` to declare what you know up front, for example
    ``qr.Capabilities(list_predictions=False, cancel=False)`` for a gateway that relays
    create and get only.

    Attributes:
        list_predictions: ``GET /v1/predictions`` exists.
        cancel: ``POST /v1/predictions/{id}/cancel`` exists.
        sync_wait: creates sent with ``Prefer: wait`` are held open until the
            prediction finishes (or the wait runs out).
        rate_limit_headers: answers carry ``ratelimit-remaining``.
    """

    list_predictions: bool | None = attrs.field(default=None, validator=_KNOWN)
    cancel: bool | None = attrs.field(default=None, validator=_KNOWN)
    sync_wait: bool | None = attrs.field(default=None, validator=_KNOWN)
    rate_limit_headers: bool | None = attrs.field(default=None, validator=_KNOWN)


class CapabilityBook:
    """One client's knowledge of its server, as plain attributes read on hot paths.

    `learn` records evidence; an absence is logged once, with what the client does
    instead. Evidence overrides what was declared (a declared route that answers 404 is
    absent after all).
    """

    __slots__ = ("cancel", "list_predictions", "rate_limit_headers", "sync_wait")

    def __init__(self, declared: Capabilities | None = None) -> None:
        known = declared or Capabilities()
        self.list_predictions = known.list_predictions
        self.cancel = known.cancel
        self.sync_wait = known.sync_wait
        self.rate_limit_headers = known.rate_limit_headers

    def __repr__(self) -> str:
        return f"<CapabilityBook {self.snapshot()!r}>"

    def snapshot(self) -> Capabilities:
        """What is known now, frozen."""
        return Capabilities(
            list_predictions=self.list_predictions,
            cancel=self.cancel,
            sync_wait=self.sync_wait,
            rate_limit_headers=self.rate_limit_headers,
        )

    def learn(self, name: Capability, *, present: bool, evidence: str = "") -> None:
        """Record that the server has (or lacks) ``name``; log an absence once."""
        if getattr(self, name) is present:
            return
        setattr(self, name, present)
        if present:
            logger.debug("the server offers %s", name)
            return
        level, instead = _INSTEAD[name]
        logger.log(level, "%s%s", instead, f" ({evidence})" if evidence else "")
