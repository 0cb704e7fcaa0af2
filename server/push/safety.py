"""Where the server may push to: http(s) URLs that do not resolve to an address of the IANA special-purpose
registries (loopback, private, link-local, carrier-grade NAT, documentation, benchmarking, 6to4, NAT64
or IPv4-mapped forms of any of those, Teredo, ...), multicast or a cloud-metadata address (SSRF),
unless an operator allows a network with ``SYNDICATE_PUSH_ALLOW_NETWORKS``. Checked when a callback is registered and again before each
delivery (a name can be re-pointed at an internal address after it was checked).

Every block of both registries is refused, those IANA marks "globally reachable" included (AS112
``192.31.196.0/24``, ``192.175.48.0/24``, ``2001:4:112::/48``, ``2620:4f:8000::/48``; AMT ``192.52.193.0/24``,
``2001:3::/32``; the PCP, TURN and DNS-SD anycast addresses; ORCHIDv2 ``2001:20::/28``; DRIP ``2001:30::/28``):
none is a partner's web server. The exceptions are the blocks that carry an IPv4 address (IPv4-mapped
``::ffff:0:0/96``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``): judged by the address they carry."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import aiohttp
import aiohttp.abc

from server.core.errors import Problem
from server.core.networks import Network


class UnsafeDestination(Problem):
    status = 422
    slug = "unsafe-destination"


def check_url_shape(url: str, field: str = "url") -> tuple[str, int]:
    """The host and port of an absolute http(s) URL without credentials, or a 422 naming ``field``."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeDestination(f"{field} is not a valid URL.", errors=[{"pointer": f"/{field}", "detail": "invalid URL"}]) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeDestination(f"{field} must be an absolute http or https URL.",
                                errors=[{"pointer": f"/{field}", "detail": "must be http(s)"}])
    try:  # what getaddrinfo will do with the name: an empty or over-long label is refused here, not a 500
        parts.hostname.encode("idna")
    except UnicodeError:
        raise UnsafeDestination(f"{field}: the host is not a valid domain name (a label is empty or longer than "
                                "63 characters).", errors=[{"pointer": f"/{field}", "detail": "invalid host"}]) from None
    if parts.username or parts.password:
        raise UnsafeDestination(f"{field} must not carry credentials.",
                                errors=[{"pointer": f"/{field}", "detail": "credentials in URL"}])
    if len(url) > 2048:
        raise UnsafeDestination(f"{field} is longer than 2048 characters.",
                                errors=[{"pointer": f"/{field}", "detail": "too long"}])
    return parts.hostname, port


async def check_destination(url: str, allowed: tuple[Network, ...], field: str = "url") -> None:
    host, port = check_url_shape(url, field)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise UnsafeDestination(f"{field}: the host {host!r} does not resolve.",
                                errors=[{"pointer": f"/{field}", "detail": "host does not resolve"}]) from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if is_forbidden(address) and not any(address in network for network in allowed):
            raise UnsafeDestination(
                f"{field}: {host!r} resolves to {address}, an internal address the server does not push to "
                "(an operator may allow it with SYNDICATE_PUSH_ALLOW_NETWORKS).",
                errors=[{"pointer": f"/{field}", "detail": "resolves to a forbidden address"}])


def check_literal_address(url: str, allowed: tuple[Network, ...], field: str = "url") -> None:
    """When the URL's host is an IP address, refuse a forbidden one (no DNS involved)."""
    host, _port = check_url_shape(url, field)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: SafeResolver checks what it resolves to
    if is_forbidden(address) and not any(address in network for network in allowed):
        raise UnsafeDestination(f"{field}: {address} is an internal address the server does not push to.",
                                errors=[{"pointer": f"/{field}", "detail": "forbidden address"}])


class SafeResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's resolver, minus the addresses the server must not push to: the check happens on the
    very addresses the connection will use."""

    def __init__(self, allowed: tuple[Network, ...]) -> None:
        self._resolver = aiohttp.ThreadedResolver()
        self._allowed = allowed

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list:
        results = await self._resolver.resolve(host, port, family)
        safe = [r for r in results if not is_forbidden(ipaddress.ip_address(r["host"]))
                or any(ipaddress.ip_address(r["host"]) in network for network in self._allowed)]
        if not safe:
            raise OSError(f"{host} resolves only to addresses the server does not push to")
        return safe

    async def close(self) -> None:
        await self._resolver.close()


# The IANA special-purpose address registries (IPv4 and IPv6, as of 2026: every block, or a larger one that holds
# it), plus multicast and the deprecated site-local fec0::/10: nothing here is a partner's public web server.
# Written out, rather than taken from ``ipaddress``'s ``is_global``, whose lists have changed between Python
# releases. tests/test_push_safety.py holds the registries entry by entry.
SPECIAL_PURPOSE = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "100:0:0:1::/64", "2001::/23", "2001:db8::/32",
    "2620:4f:8000::/48", "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))
# IPv6 prefixes that carry an IPv4 address: judged by the address they carry.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: IPv4-mapped, 6to4, NAT64 (well-known prefix) or the
    deprecated IPv4-compatible form."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether push must refuse ``address`` (before the operator's allowed networks are considered)."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = embedded_ipv4(address)
        if carried is not None:
            return is_forbidden(carried)
    return any(address in network for network in SPECIAL_PURPOSE if network.version == address.version)


