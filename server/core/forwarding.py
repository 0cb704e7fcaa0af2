"""Who the client is behind a load balancer: the one rule, for every consumer of a client address (the
failed-key throttle, the hub's and the dashboard's per-address limits, the access log).

The TCP peer is the client unless it is in ``SYNDICATE_TRUSTED_PROXIES``. When it is, the hops the
proxies added (``X-Forwarded-For``, or ``Forwarded``'s ``for=`` when ``SYNDICATE_FORWARDED_HEADER=forwarded``)
are read from the right, skipping every trusted proxy: the first address that is not a trusted proxy is
the client (the *rightmost untrusted hop*; a client can write anything to the left of it, never to the
right). Only the one header the balancer writes is read: a header it passes through unchanged is
whatever the client made it. A hop that is not an address (``unknown``, an obfuscated ``_name``, junk)
ends the walk at the trusted proxy that passed it on; when every hop is trusted the leftmost is the
client. Pure: no aiohttp; the request's headers come in through :class:`Headers`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from server.core.networks import Network

MAX_HOPS = 32  # hops read from the right; a longer chain is a client writing junk to the left
_MEMO_LIMIT = 4096
_FORWARDED_ELEMENT = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")+')
_FOR_PAIR = re.compile(r'(?i)(?:^|;)\s*for\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


class ForwardedHeader(StrEnum):
    """The header the balancer writes the client's address to (``SYNDICATE_FORWARDED_HEADER``)."""

    X_FORWARDED_FOR = "x-forwarded-for"  # nginx's $proxy_add_x_forwarded_for, HAProxy's option forwardfor
    FORWARDED = "forwarded"  # RFC 7239


class Headers(Protocol):
    """A request's headers (aiohttp's ``CIMultiDictProxy``): every value of one name."""

    def getall(self, key: str, default: list[str], /) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """``SYNDICATE_TRUSTED_PROXIES`` (default: none, so the TCP peer is always the client) and the header
    they write."""

    networks: tuple[Network, ...] = ()
    header: ForwardedHeader = ForwardedHeader.X_FORWARDED_FOR
    _memo: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def client_address(self, peer: str | None, headers: Headers) -> str:
        """The client's address for a request from ``peer`` (the TCP peer's address, ``None`` when
        unknown) with ``headers``; ``"unknown"`` when there is none."""
        if not peer:
            return "unknown"
        if not self.networks or not self.trusts(peer):
            return peer
        current = _canonical(peer) or peer
        for hop in reversed(self._hops(headers)):
            if hop is None:
                return current
            current = hop
            if not self.trusts(hop):
                return hop
        return current

    def trusts(self, address: str) -> bool:
        """Whether ``address`` is one of the trusted proxies."""
        known = self._memo.get(address)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            trusted = False
        else:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            trusted = any(ip in network for network in self.networks)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[address] = trusted
        return trusted

    def _hops(self, headers: Headers) -> list[str | None]:
        """The addresses the proxies added, left to right (None for an entry that is not one)."""
        values = headers.getall("Forwarded" if self.header is ForwardedHeader.FORWARDED else "X-Forwarded-For", [])
        if self.header is ForwardedHeader.FORWARDED:
            hops = [_forwarded_for(element) for value in values for element in _FORWARDED_ELEMENT.findall(value)]
        else:
            hops = [_canonical(part) for value in values for part in value.split(",")]
        return hops[-MAX_HOPS:]


def _forwarded_for(element: str) -> str | None:
    match = _FOR_PAIR.search(element.strip())
    if match is None:
        return None
    value = match.group(1)
    if value.startswith('"'):
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return _canonical(value)


def _canonical(text: str) -> str | None:
    """An address as text in its canonical form (port and IPv6 brackets dropped), or None."""
    text = text.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)
