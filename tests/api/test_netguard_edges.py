"""netguard at its edges: credentials of any shape, host names IDNA refuses, IPv6 beyond global
unicast, and the ranges only the "not globally routable" rule catches."""

from __future__ import annotations

import ipaddress

import pytest

from compose_api import netguard


def _never(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolved {host}: the check should refuse it before resolving")


def _public(host: str, port: int) -> list[str]:
    return ["93.184.215.14"]


@pytest.mark.parametrize(
    "url",
    [
        "https://user@example.com/",  # a user name alone
        "https://:secret@example.com/",  # a password alone
        "https://user:secret@example.com/",
    ],
)
def test_credentials_in_any_form_are_refused(url: str) -> None:
    with pytest.raises(netguard.ForbiddenAddressError, match="credentials"):
        netguard.check_url(url, resolver=_never)


def test_the_same_host_without_credentials_passes() -> None:
    destination = netguard.check_url("https://example.com/a?b=1", resolver=_public)
    assert (str(destination.ip), destination.target) == ("93.184.215.14", "/a?b=1")


@pytest.mark.parametrize(
    "url", ["https://a..b/", "https://" + "x" * 64 + ".example.com/", "https://.example.com/"]
)
def test_host_names_idna_refuses_are_forbidden_not_a_crash(url: str) -> None:
    with pytest.raises(netguard.ForbiddenAddressError, match="not a valid host name"):
        netguard.check_url(url, resolver=_public)


def test_an_idna_failure_inside_the_resolver_is_forbidden_too() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise UnicodeError("label too long")

    with pytest.raises(netguard.ForbiddenAddressError, match="not a valid host name"):
        netguard.resolve("fine.example.com", 443, resolver=resolver)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("::a9fe:a9fe", "IPv4-compatible IPv6 address"),  # ::169.254.169.254
        ("::7f00:1", "IPv4-compatible IPv6 address"),  # ::127.0.0.1
        ("::10.0.0.1", "IPv4-compatible IPv6 address"),
        ("::8.8.8.8", "IPv4-compatible IPv6 address"),  # even a public one: not global unicast
        ("1::1", "outside global unicast"),
        ("4000::1", "outside global unicast"),
        ("e000::1", "outside global unicast"),
        ("2001:2::1", "not globally routable"),  # benchmarking, 2001:2::/48
        ("2001:2:0:ffff::1", "not globally routable"),
        ("2001:10::1", "not globally routable"),  # ORCHID, 2001:10::/28
        ("2001:1f:ffff::1", "not globally routable"),
    ],
)
def test_ipv6_beyond_global_unicast_and_its_special_ranges_is_refused(
    address: str, why: str
) -> None:
    reason = netguard.forbidden_reason(ipaddress.ip_address(address))
    assert reason is not None and why in reason, reason


@pytest.mark.parametrize("address", ["2606:4700::1111", "2a00:1450:4001::200e", "2001:4860::8888"])
def test_global_unicast_ipv6_passes(address: str) -> None:
    assert netguard.forbidden_reason(ipaddress.ip_address(address)) is None


def test_the_allow_list_still_opens_ipv6_outside_global_unicast_for_tests() -> None:
    policy = netguard.Policy(allow=netguard.parse_networks("::/96"))
    assert netguard.forbidden_reason(ipaddress.ip_address("::a00:1"), policy) is None
