"""IP networks from settings (``SYNDICATE_PUSH_ALLOW_NETWORKS``)."""

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
