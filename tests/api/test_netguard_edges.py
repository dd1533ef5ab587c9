"""netguard at its edges: credentials of any shape, host names IDNA refuses, IPv6 beyond global
unicast, and the ranges only the "not globally routable" rule catches."""

from __future__ import annotations

import dataclasses
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


def _table(answers: dict[str, list[str]]) -> netguard.Resolver:
    def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    return resolve


@pytest.mark.parametrize(
    ("host", "answer"),
    [
        ("internal.example.com", "10.0.0.7"),  # the name sorts after its address
        ("0x7f.1", "127.0.0.1"),  # ... and before it
        ("api.example.com", "fc00::1"),
    ],
)
def test_a_refused_name_is_named_with_the_address_it_resolved_to(host: str, answer: str) -> None:
    with pytest.raises(netguard.ForbiddenAddressError) as info:
        netguard.check_url(f"https://{host}/", resolver=_table({host: [answer]}))
    assert str(info.value).startswith(f"{host} -> {answer}: "), info.value


@pytest.mark.parametrize(
    ("url", "address"), [("https://10.0.0.1/", "10.0.0.1"), ("https://[fc00::1]/", "fc00::1")]
)
def test_a_refused_address_literal_is_named_once(url: str, address: str) -> None:
    with pytest.raises(netguard.ForbiddenAddressError) as info:
        netguard.check_url(url, resolver=_never)
    assert str(info.value).split(": ")[0] == address


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:secret@example.com:8443/a?token=x", "https://example.com:8443/a"),
        ("https://user:secret@example.com/a", "https://example.com/a"),
    ],
)
def test_a_refusal_of_credentials_shows_the_url_without_them(url: str, shown: str) -> None:
    with pytest.raises(netguard.ForbiddenAddressError) as info:
        netguard.check_url(url, resolver=_never)
    assert str(info.value) == f"{shown}: credentials in URLs are not allowed"


def test_each_scheme_has_its_default_port_and_an_explicit_port_wins() -> None:
    policy = netguard.Policy(allow_http=True)
    ports = [
        netguard.check_url(url, policy, resolver=_public).port
        for url in (
            "https://example.com/",
            "http://example.com/",
            "HTTP://example.com/",
            "https://example.com:8443/",
            "http://example.com:8080/",
        )
    ]
    assert ports == [443, 80, 80, 8443, 8080]


@pytest.mark.parametrize("port", ["99999", "-1", "abc"])
def test_an_invalid_port_is_refused(port: str) -> None:
    with pytest.raises(netguard.ForbiddenAddressError, match="invalid port"):
        netguard.check_url(f"https://example.com:{port}/", resolver=_never)


def test_an_ipv6_destination_is_bracketed_where_a_url_needs_it() -> None:
    v6 = netguard.check_url("https://[2606:4700::1111]:8443/", resolver=_never)
    v4 = netguard.check_url("https://93.184.215.14/", resolver=_never)
    resolver = _table({"v6.example.com": ["2606:4700::1111"]})
    named = netguard.check_url("https://v6.example.com/", resolver=resolver)
    assert (v6.ip_literal, v6.host, v6.port) == ("[2606:4700::1111]", "2606:4700::1111", 8443)
    assert v4.ip_literal == "93.184.215.14"
    assert (named.ip_literal, named.host) == ("[2606:4700::1111]", "v6.example.com")


def test_the_first_answer_of_the_resolver_is_the_one_connected_to() -> None:
    # getaddrinfo orders its answers by preference (RFC 6724): the first is the one to use.
    resolver = _table({"two.example.com": ["93.184.215.14", "2606:4700::1111"]})
    assert str(netguard.resolve("two.example.com", 443, resolver=resolver)) == "93.184.215.14"


def test_a_zone_index_does_not_hide_a_forbidden_address() -> None:
    # fd00:ec2::254%eth0 is the IPv6 metadata address; the scope must not make it another one,
    # even under an allow-list that opens its unique-local range.
    wide = netguard.Policy(allow=netguard.parse_networks("fc00::/7, fe80::/10"))
    for policy in (netguard.Policy(), wide):
        reason = netguard.forbidden_reason(ipaddress.ip_address("fd00:ec2::254%eth0"), policy)
        assert reason == "cloud metadata address"
    assert netguard.forbidden_reason(ipaddress.ip_address("fe80::1%eth0")) == "link-local address"
    assert netguard.forbidden_reason(ipaddress.ip_address("fe80::1%eth0"), wide) is None


def test_a_teredo_address_names_the_forbidden_client_it_embeds() -> None:
    # Teredo 2001:0:<server>:<flags>:<port>:<client, inverted>: server 8.8.8.8, client 10.0.0.1.
    teredo = ipaddress.IPv6Address("2001:0:808:808:0:0:f5ff:fffe")
    assert teredo.teredo == (ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1"))
    assert netguard.forbidden_reason(teredo) == (
        "IPv6 address embedding a forbidden IPv4 address (private address)"
    )


def test_allow_list_entries_with_host_bits_and_empty_entries_are_read_as_meant() -> None:
    assert netguard.parse_networks("127.0.0.1/8, , 10.1.2.3/16,") == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("10.1.0.0/16"),
    )
    assert netguard.parse_networks(["", "::1/64"]) == (ipaddress.ip_network("::/64"),)


def test_a_policy_and_a_checked_destination_cannot_be_changed() -> None:
    # Components share one Policy; a Destination is pinned to the address that was checked.
    policy = netguard.Policy()
    destination = netguard.check_url("https://example.com/", resolver=_public)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.allow = netguard.parse_networks("0.0.0.0/0")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        destination.ip = ipaddress.ip_address("169.254.169.254")  # type: ignore[misc]
