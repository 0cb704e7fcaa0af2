"""Where the server may push to: http(s) URLs that do not resolve to loopback, private, link-local,
multicast, reserved or cloud-metadata addresses (SSRF), unless an operator allows a network with
``SYNDICATE_PUSH_ALLOW_NETWORKS``. Checked when a callback is registered and again before each
delivery (a name can be re-pointed at an internal address after it was checked)."""

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
        if _forbidden(address) and not any(address in network for network in allowed):
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
    if _forbidden(address) and not any(address in network for network in allowed):
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
        safe = [r for r in results if not _forbidden(ipaddress.ip_address(r["host"]))
                or any(ipaddress.ip_address(r["host"]) in network for network in self._allowed)]
        if not safe:
            raise OSError(f"{host} resolves only to addresses the server does not push to")
        return safe

    async def close(self) -> None:
        await self._resolver.close()


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (address.is_loopback or address.is_private or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified or address == ipaddress.ip_address("169.254.169.254"))
