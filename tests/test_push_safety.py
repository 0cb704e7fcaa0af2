"""The SSRF guard, address by address: every special-purpose range of the IANA registries is refused,
IPv6 forms that carry an IPv4 address are judged by that address, public addresses pass. Pure."""

from __future__ import annotations

import ipaddress

import pytest

from server.push.safety import UnsafeDestination, check_literal_address, is_forbidden

REFUSED = [
    "0.0.0.0", "0.1.2.3", "10.1.2.3", "100.64.0.1", "100.100.100.200",  # CGNAT, incl. a cloud metadata address
    "127.0.0.1", "169.254.169.254", "172.16.0.1", "172.31.255.255", "192.0.0.8", "192.0.2.5", "192.88.99.1",
    "192.168.1.1", "198.18.0.1", "198.19.255.255", "198.51.100.7", "203.0.113.9", "224.0.0.1", "239.1.1.1",
    "240.0.0.1", "255.255.255.255",
    "::", "::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1",
    "2002:7f00:1::", "2002:a9fe:a9fe::1", "2002:0a00:0001::",  # 6to4 carrying 127.0.0.1, 169.254.169.254, 10.0.0.1
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::1",  # NAT64 carrying loopback / metadata; local NAT64
    "2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:2::1", "2001:10::1", "2001:db8::1", "3fff::1", "100::1", "5f00::1",  # benchmarking, ORCHID, docs, discard
    "fc00::1", "fd12:3456::1", "fe80::1", "fec0::1", "ff02::1",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "2a00:1450:4001::200e",
           "2002:808:808::1", "64:ff9b::808:808", "::ffff:8.8.8.8"]


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
