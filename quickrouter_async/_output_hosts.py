"""Where output files may be downloaded from.

Output URLs come from the server, so a backend that downloads them on a user's behalf
must not be turned against its own network. Downloads never reach a link-local address
(169.254.0.0/16, fe80::/10: the cloud's metadata service lives there) nor a loopback one
(127.0.0.0/8, ::1, and 0.0.0.0, which reaches this machine), unless the API itself is on
loopback, as the emulator is. With ``output_hosts`` only those hosts are reached at all.

The address checked is the one actually connected to, not only what the URL says:

- each hop of a download (the URL, then each redirect) passes a per-request aiohttp
  client middleware, which checks its scheme, its host against ``output_hosts`` and a
  literal address, before the hop is sent;
- the client's own connector makes its sockets with `guarded_socket`, which refuses a
  refused address before connecting, so a host name that resolves to one gets no request
  at all (other addresses of the same name are still tried);
- for a connection the factory did not make (a borrowed session's connector), the
  middleware checks the connection's peer address before the answer's body is read.
"""

from __future__ import annotations

import contextvars
import errno
import ipaddress
import socket
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import aiohttp
import attrs

from ._config import is_loopback
from ._errors import InputError, OutputURLRefused, short_repr

if TYPE_CHECKING:
    from collections.abc import Iterable

    from aiohappyeyeballs import AddrInfoType
    from yarl import URL

__all__ = [
    "OutputPolicy",
    "guarded_socket",
    "on_loopback",
    "output_hosts_of",
    "output_middleware",
]

_LINK_LOCAL: Final = "a link-local address (the cloud's metadata service lives there)"
_LOOPBACK: Final = "a loopback address (this machine)"


def output_hosts_of(hosts: Iterable[str] | None) -> tuple[str, ...] | None:
    """``output_hosts`` checked: host names, or ``*.domain`` for any of its subdomains.

    Raises:
        InputError: a pattern is not a bare host name.
    """
    if hosts is None:
        return None
    if isinstance(hosts, str):
        raise InputError(
            "output_hosts takes a list of hosts, e.g. ('replicate.delivery',)",
            field="output_hosts",
        )
    patterns = []
    given: Iterable[object] = hosts
    for host in given:
        pattern = host.strip().lower().rstrip(".") if isinstance(host, str) else ""
        name = pattern.removeprefix("*.")
        if not name or any(c in name for c in "/:@*?# ") or name.startswith("."):
            raise InputError(
                f"output_hosts takes host names or '*.domain', got {short_repr(host)}",
                field="output_hosts",
            )
        patterns.append(pattern)
    return tuple(patterns)


def on_loopback(url: str) -> bool:
    """Whether ``url``'s host is a loopback address or ``localhost``."""
    return is_loopback(urlsplit(url).hostname or "")


@attrs.frozen
class OutputPolicy:
    """The hosts and addresses downloads may reach.

    Attributes:
        hosts: the allowed host patterns (``*.domain`` for its subdomains), or None for
            any host.
        allow_loopback: loopback addresses are allowed (the API itself is on loopback).
    """

    hosts: tuple[str, ...] | None = None
    allow_loopback: bool = False

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` (a name or a literal address) matches ``hosts``."""
        if self.hosts is None:
            return True
        host = host.lower().rstrip(".")
        for pattern in self.hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]):
                    return True
            elif host == pattern:
                return True
        return False

    def refusal(self, address: str) -> str | None:
        """Why downloads may not connect to ``address``, or None when they may."""
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])  # without an IPv6 zone
        except ValueError:
            return None  # not an address (a host name): its addresses are checked later
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_link_local:
            return _LINK_LOCAL
        if (ip.is_loopback or ip.is_unspecified) and not self.allow_loopback:
            return _LOOPBACK
        return None


def _shown(url: URL) -> str:
    """A URL for a message: scheme, host, port and path (never its query), cut short."""
    parts = urlsplit(str(url))
    text = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    return text if len(text) <= 200 else text[:197] + "..."


def _refused(url: URL, why: str) -> OutputURLRefused:
    shown = _shown(url)
    return OutputURLRefused(f"output file {shown} refused: {why}", url=shown)


class _Hop:
    """One hop of a download under way, as the socket factory sees it."""

    __slots__ = ("policy", "refused")

    def __init__(self, policy: OutputPolicy) -> None:
        self.policy = policy
        self.refused: list[tuple[str, str]] = []


_HOP: Final[contextvars.ContextVar[_Hop | None]] = contextvars.ContextVar(
    "quickrouter_async_output_hop", default=None
)


def guarded_socket(addr_info: AddrInfoType) -> socket.socket:
    """The client connector's socket factory: refuses what the current download may not
    reach (requests to the API are not downloads and are never refused).

    It raises an `OSError`, so the other addresses of a host name are still tried; the
    middleware turns the failed connection into `OutputURLRefused`.
    """
    family, kind, proto, _, address = addr_info
    hop = _HOP.get()
    if hop is not None:
        why = hop.policy.refusal(str(address[0]))
        if why is not None:
            hop.refused.append((str(address[0]), why))
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{address[0]} is {why}")
    return socket.socket(family=family, type=kind, proto=proto)


def _peer(response: aiohttp.ClientResponse) -> str | None:
    """The address the answer came from.

    aiohttp hands a small answer's connection back to its pool as soon as the whole
    body has arrived (``response.connection`` is then None); the protocol the answer
    was read from still knows its transport, so it is asked then. Without either
    (a closed connection), there is no address to check, and None.
    """
    connection = response.connection
    protocol = (
        connection.protocol if connection is not None else getattr(response, "_protocol", None)
    )
    transport = getattr(protocol, "transport", None)
    peer = None if transport is None else transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


def output_middleware(policy: OutputPolicy) -> aiohttp.ClientMiddlewareType:
    """An aiohttp client middleware that holds every hop of a download to ``policy``."""

    async def check(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        url = request.url
        host = url.raw_host or ""
        if not policy.host_allowed(host):
            listed = ", ".join(policy.hosts or ())
            raise _refused(url, f"{short_repr(host)} is not one of output_hosts ({listed})")
        why = policy.refusal(host)
        if why is not None:
            raise _refused(url, f"{host} is {why}")
        hop = _Hop(policy)
        token = _HOP.set(hop)
        try:
            response = await handler(request)
        except aiohttp.ClientConnectorError:
            if not hop.refused:
                raise
            address, why = hop.refused[0]
            raise _refused(url, f"{host} resolves to {address}, {why}") from None
        finally:
            _HOP.reset(token)
        peer = _peer(response)
        reason = None if peer is None else policy.refusal(peer)
        if reason is not None:
            response.close()
            raise _refused(url, f"{host} is at {peer}, {reason}")
        return response

    return check
