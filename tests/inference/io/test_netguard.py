"""compose_api.netguard: which addresses and URLs are refused, and why."""

from __future__ import annotations

import ipaddress

import pytest

from compose_api import netguard

FORBIDDEN = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("169.254.1.1", "link-local"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("::ffff:127.0.0.1", "IPv4-mapped"),
    ("::ffff:169.254.169.254", "IPv4-mapped"),
    ("fc00::1", "unique local"),
    ("fe80::1", "link-local"),
    ("64:ff9b::a9fe:a9fe", "NAT64"),
    ("2002:7f00:1::1", "embedding a forbidden IPv4"),
]


@pytest.mark.parametrize(("address", "why"), FORBIDDEN)
def test_forbidden_addresses_name_their_reason(address: str, why: str) -> None:
    reason = netguard.forbidden_reason(ipaddress.ip_address(address))
    assert reason is not None
    assert why in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "52.95.110.1", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert netguard.forbidden_reason(ipaddress.ip_address(address)) is None


def test_allow_list_opens_a_network_but_never_metadata() -> None:
    policy = netguard.Policy(allow=netguard.parse_networks("127.0.0.1/32, 169.254.0.0/16"))
    assert netguard.forbidden_reason(ipaddress.ip_address("127.0.0.1"), policy) is None
    assert netguard.forbidden_reason(ipaddress.ip_address("127.0.0.2"), policy) == (
        "loopback address"
    )
    assert netguard.forbidden_reason(ipaddress.ip_address("169.254.9.9"), policy) is None
    assert netguard.forbidden_reason(ipaddress.ip_address("169.254.169.254"), policy) == (
        "cloud metadata address"
    )


def test_bad_allow_list_entry_is_named() -> None:
    with pytest.raises(ValueError, match=r"COMPOSE_NETGUARD_ALLOW_CIDRS: 'nonsense'"):
        netguard.Policy.from_env({"COMPOSE_NETGUARD_ALLOW_CIDRS": "10.0.0.0/8,nonsense"})


def test_policy_from_env() -> None:
    policy = netguard.Policy.from_env(
        {"COMPOSE_NETGUARD_ALLOW_CIDRS": "127.0.0.1/32", "COMPOSE_NETGUARD_ALLOW_HTTP": "1"}
    )
    assert policy.allow == (ipaddress.ip_network("127.0.0.1/32"),)
    assert policy.schemes == {"http", "https"}
    assert netguard.Policy.from_env({}).schemes == {"https"}


def fixed_resolver(table: dict[str, list[str]]) -> netguard.Resolver:
    def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve


def test_check_url_pins_the_resolved_address() -> None:
    resolver = fixed_resolver({"images.example.com": ["93.184.216.34"]})
    destination = netguard.check_url("https://images.example.com/a/b.png?x=1", resolver=resolver)
    assert destination.ip == ipaddress.ip_address("93.184.216.34")
    assert destination.host == "images.example.com"
    assert destination.port == 443
    assert destination.target == "/a/b.png?x=1"


def test_one_private_answer_refuses_the_host() -> None:
    resolver = fixed_resolver({"rebind.example.com": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(netguard.ForbiddenAddressError, match=r"rebind.example.com -> 10.0.0.7"):
        netguard.check_url("https://rebind.example.com/", resolver=resolver)


def test_name_resolving_to_metadata_is_refused() -> None:
    resolver = fixed_resolver({"metadata.example.com": ["169.254.169.254"]})
    with pytest.raises(netguard.ForbiddenAddressError, match="cloud metadata"):
        netguard.check_url("https://metadata.example.com/latest/", resolver=resolver)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://93.184.216.34/", "scheme 'http' not allowed"),
        ("file:///etc/passwd", "scheme 'file' not allowed"),
        ("https://user:secret@93.184.216.34/", "credentials in URLs"),
        ("https://[::ffff:a9fe:a9fe]/", "IPv4-mapped"),
        ("https://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("https:///nohost", "no host"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(netguard.ForbiddenAddressError, match=message) as info:
        netguard.check_url(url, resolver=fixed_resolver({}))
    assert "secret" not in str(info.value)


def test_numeric_host_forms_are_checked_after_resolution() -> None:
    # "2130706433" and "0x7f.1" are 127.0.0.1 to the system resolver.
    for host in ("2130706433", "0x7f.1", "localhost"):
        with pytest.raises(netguard.ForbiddenAddressError, match="loopback"):
            netguard.check_url(f"https://{host}/")


def test_plain_http_to_an_allowed_test_server() -> None:
    policy = netguard.Policy(allow=netguard.parse_networks("127.0.0.1/32"), allow_http=True)
    destination = netguard.check_url("http://127.0.0.1:8080/x", policy)
    assert (destination.ip_literal, destination.port, destination.target) == (
        "127.0.0.1",
        8080,
        "/x",
    )
