"""The SSRF guard, address by address: every block of the IANA special-purpose registries is refused (those
IANA marks globally reachable included), IPv6 forms that carry an IPv4 address are judged by that address,
public addresses pass. Pure."""

from __future__ import annotations

import ipaddress

import pytest

from server.push.safety import SPECIAL_PURPOSE, UnsafeDestination, check_literal_address, is_forbidden

# The IANA special-purpose address registries, entry by entry (iana-ipv4-special-registry and
# iana-ipv6-special-registry as of 2026), each with its first address and one or more inside it. Blocks IANA
# marks globally reachable are refused too. The three blocks in CARRIERS hold an IPv4 address and are judged by
# it: their addresses here carry a refused one.
REGISTRY = [
    ("0.0.0.0/8", "this network", ["0.0.0.0", "0.1.2.3"]),
    ("0.0.0.0/32", "this host on this network", ["0.0.0.0"]),
    ("10.0.0.0/8", "private use", ["10.0.0.0", "10.1.2.3"]),
    ("100.64.0.0/10", "shared address space (CGNAT)", ["100.64.0.0", "100.100.100.200", "100.127.255.255"]),
    ("127.0.0.0/8", "loopback", ["127.0.0.0", "127.0.0.1"]),
    ("169.254.0.0/16", "link local", ["169.254.0.0", "169.254.169.254"]),  # incl. the cloud metadata address
    ("172.16.0.0/12", "private use", ["172.16.0.0", "172.31.255.255"]),
    ("192.0.0.0/24", "IETF protocol assignments", ["192.0.0.0", "192.0.0.200"]),
    ("192.0.0.0/29", "IPv4 service continuity prefix", ["192.0.0.0", "192.0.0.4"]),
    ("192.0.0.8/32", "IPv4 dummy address", ["192.0.0.8"]),
    ("192.0.0.9/32", "PCP anycast (globally reachable)", ["192.0.0.9"]),
    ("192.0.0.10/32", "TURN anycast (globally reachable)", ["192.0.0.10"]),
    ("192.0.0.170/32", "NAT64/DNS64 discovery", ["192.0.0.170"]),
    ("192.0.0.171/32", "NAT64/DNS64 discovery", ["192.0.0.171"]),
    ("192.0.2.0/24", "documentation (TEST-NET-1)", ["192.0.2.0", "192.0.2.5"]),
    ("192.31.196.0/24", "AS112-v4 (globally reachable)", ["192.31.196.0", "192.31.196.1"]),
    ("192.52.193.0/24", "AMT (globally reachable)", ["192.52.193.0", "192.52.193.1"]),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast", ["192.88.99.0", "192.88.99.1"]),
    ("192.88.99.2/32", "6a44 relay anycast", ["192.88.99.2"]),
    ("192.168.0.0/16", "private use", ["192.168.0.0", "192.168.1.1"]),
    ("192.175.48.0/24", "direct delegation AS112 (globally reachable)", ["192.175.48.0", "192.175.48.6"]),
    ("198.18.0.0/15", "benchmarking", ["198.18.0.0", "198.19.255.255"]),
    ("198.51.100.0/24", "documentation (TEST-NET-2)", ["198.51.100.0", "198.51.100.7"]),
    ("203.0.113.0/24", "documentation (TEST-NET-3)", ["203.0.113.0", "203.0.113.9"]),
    ("240.0.0.0/4", "reserved", ["240.0.0.0", "250.1.2.3"]),
    ("255.255.255.255/32", "limited broadcast", ["255.255.255.255"]),
    ("::1/128", "loopback", ["::1"]),
    ("::/128", "unspecified", ["::"]),
    ("::ffff:0:0/96", "IPv4-mapped", ["::ffff:0.0.0.0", "::ffff:127.0.0.1", "::ffff:10.0.0.1"]),
    ("64:ff9b::/96", "NAT64 well-known prefix (globally reachable)",
     ["64:ff9b::", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe"]),  # carrying loopback, the metadata address
    ("64:ff9b:1::/48", "NAT64 local use", ["64:ff9b:1::", "64:ff9b:1::1", "64:ff9b:1:ffff::808:808"]),
    ("100::/64", "discard-only", ["100::", "100::1"]),
    ("100:0:0:1::/64", "dummy IPv6 prefix (RFC 9780)", ["100:0:0:1::", "100:0:0:1::1"]),
    ("2001::/23", "IETF protocol assignments", ["2001::", "2001:1ff:ffff::1"]),
    ("2001::/32", "Teredo", ["2001::", "2001:0:4136:e378:8000:63bf:3fff:fdd2"]),
    ("2001:1::1/128", "PCP anycast (globally reachable)", ["2001:1::1"]),
    ("2001:1::2/128", "TURN anycast (globally reachable)", ["2001:1::2"]),
    ("2001:1::3/128", "DNS-SD SRP anycast (globally reachable)", ["2001:1::3"]),
    ("2001:2::/48", "benchmarking", ["2001:2::", "2001:2:0:ffff::1"]),
    ("2001:3::/32", "AMT (globally reachable)", ["2001:3::", "2001:3:ffff::1"]),
    ("2001:4:112::/48", "AS112-v6 (globally reachable)", ["2001:4:112::", "2001:4:112::1"]),
    ("2001:10::/28", "deprecated ORCHID", ["2001:10::", "2001:1f:ffff::1"]),
    ("2001:20::/28", "ORCHIDv2 (globally reachable)", ["2001:20::", "2001:2f::1"]),
    ("2001:30::/28", "DRIP entity tags (globally reachable)", ["2001:30::", "2001:3f::1"]),
    ("2001:db8::/32", "documentation", ["2001:db8::", "2001:db8::1"]),
    ("2002::/16", "6to4", ["2002::", "2002:7f00:1::", "2002:a9fe:a9fe::1", "2002:0a00:0001::"]),
    ("2620:4f:8000::/48", "direct delegation AS112 (globally reachable)", ["2620:4f:8000::", "2620:4f:8000::6"]),
    ("3fff::/20", "documentation (RFC 9637)", ["3fff::", "3fff:fff::1"]),
    ("5f00::/16", "SRv6 SIDs (RFC 9602)", ["5f00::", "5f00:ffff::1"]),
    ("fc00::/7", "unique local", ["fc00::", "fd12:3456::1"]),
    ("fe80::/10", "link-local unicast", ["fe80::", "fe80::1", "febf:ffff::1"]),
]
CARRIERS = {"::ffff:0:0/96", "64:ff9b::/96", "2002::/16"}
# Outside the registries, refused as well: multicast, the deprecated site-local block, and the deprecated
# IPv4-compatible form carrying loopback.
OTHERS = ["224.0.0.0", "224.0.0.1", "239.1.1.1", "ff00::", "ff02::1", "ff0e::1", "fec0::", "fec0::1", "::127.0.0.1"]
REFUSED = sorted({address for _block, _name, addresses in REGISTRY for address in addresses} | set(OTHERS))
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "2a00:1450:4001::200e", "2001:200::1",
           "2002:808:808::1", "64:ff9b::808:808", "::ffff:8.8.8.8"]


@pytest.mark.parametrize(("block", "name", "addresses"), REGISTRY, ids=[entry[0] for entry in REGISTRY])
def test_each_registry_block_is_refused_whole_and_tested_from_its_first_address(block, name, addresses):
    network = ipaddress.ip_network(block)
    assert str(network.network_address) == str(ipaddress.ip_address(addresses[0]))
    assert all(ipaddress.ip_address(address) in network for address in addresses)
    if block not in CARRIERS:
        assert any(network.subnet_of(special) for special in SPECIAL_PURPOSE if special.version == network.version), name


@pytest.mark.parametrize("address", REFUSED)
def test_a_special_purpose_address_is_refused(address):
    assert is_forbidden(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(UnsafeDestination):
        check_literal_address(f"http://{host}/hook", ())


@pytest.mark.parametrize("address", ALLOWED)
def test_a_public_address_passes(address):
    assert not is_forbidden(ipaddress.ip_address(address))


def test_an_operator_may_allow_a_network():
    check_literal_address("http://127.0.0.1:9/hook", (ipaddress.ip_network("127.0.0.0/8"),))
    with pytest.raises(UnsafeDestination):
        check_literal_address("http://10.0.0.1/hook", (ipaddress.ip_network("127.0.0.0/8"),))


@pytest.mark.parametrize("host", ["a" * 64 + ".example.com", "a..b.example", ".a.example", "\u00e9" * 70 + ".example"])
def test_a_host_no_resolver_can_encode_is_refused_as_a_bad_url(host):
    """A label longer than 63 characters or an empty one: getaddrinfo would raise UnicodeError (a 500);
    the URL check refuses it first, for webhooks and WebSub callbacks alike."""
    from server.push.safety import UnsafeDestination, check_url_shape

    with pytest.raises(UnsafeDestination):
        check_url_shape(f"https://{host}/in")
    assert check_url_shape("https://" + "a" * 63 + ".example.com/in")[0] == "a" * 63 + ".example.com"
