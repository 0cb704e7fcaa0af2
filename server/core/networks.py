"""IP networks from settings (``SYNDICATE_PUSH_ALLOW_NETWORKS``), and the bucket a client address is
counted in by the per-address limits (:func:`address_bucket`)."""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str, variable: str = "SYNDICATE_PUSH_ALLOW_NETWORKS") -> tuple[Network, ...]:
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{variable}: {part!r} is not a network in CIDR form (e.g. 127.0.0.0/8)") from None
    return tuple(networks)


IPV6_BUCKET_PREFIX = 64


def address_bucket(address: str) -> str:
    """The unit per-address limits count a client in: an IPv4 address as it is, an IPv6 address as its
    /64 (one subscriber's LAN usually gets a whole /64, so each of its addresses is not a new client),
    an IPv4-mapped IPv6 address as the IPv4 one; anything else (``unknown``, a Unix socket) unchanged."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, IPV6_BUCKET_PREFIX), strict=False))
    return str(parsed)
