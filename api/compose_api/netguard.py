"""Outbound address checks: no request to private, loopback, link-local or cloud-metadata hosts.

Users hand the project URLs (input images over HTTPS, webhook callbacks). Fetching such a URL
from inside a cluster is a server-side request forgery risk: ``https://169.254.169.254/`` reads
the node's cloud credentials, ``https://10.0.0.5/`` reaches internal services. The inference
image's fetcher (``compose_inference.fetching``) and the gateway's callback sender both call this
module before every connection, including every redirect hop.

Two rules defeat DNS tricks: a host is refused when *any* address it resolves to is forbidden, and
the caller connects to the checked address returned here (``Destination.ip``), never re-resolving
the name, so a second DNS answer (rebinding) cannot swap in an internal address.

Pure standard library, so every component can import it. Tests widen the policy with an allow-list
of CIDRs (for a server on 127.0.0.1); cloud-metadata addresses stay forbidden even then.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses the host resolves to, as strings.
Resolver = Callable[[str, int], Sequence[str]]

ALLOW_ENV = "COMPOSE_NETGUARD_ALLOW_CIDRS"
ALLOW_HTTP_ENV = "COMPOSE_NETGUARD_ALLOW_HTTP"

# Instance metadata and similar endpoints: never reachable, whatever the allow-list says.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack instance metadata
        "169.254.170.2",  # AWS ECS task metadata / credentials
        "169.254.169.253",  # AWS VPC DNS resolver
        "169.254.169.123",  # AWS time sync
        "100.100.100.200",  # Alibaba Cloud metadata
        "192.0.0.192",  # Oracle Cloud metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS DNS over IPv6
    )
)

# Named ranges, checked in order, so a refusal says why. Anything else that Python does not
# consider globally routable is refused too ("not globally routable").
_BLOCKED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified or 'this network' address"),
    ("10.0.0.0/8", "private address"),
    ("100.64.0.0/10", "carrier-grade NAT address"),
    ("127.0.0.0/8", "loopback address"),
    ("169.254.0.0/16", "link-local address"),
    ("172.16.0.0/12", "private address"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation address"),
    ("192.88.99.0/24", "6to4 relay anycast address"),
    ("192.168.0.0/16", "private address"),
    ("198.18.0.0/15", "benchmarking address"),
    ("198.51.100.0/24", "documentation address"),
    ("203.0.113.0/24", "documentation address"),
    ("224.0.0.0/4", "multicast address"),
    ("240.0.0.0/4", "reserved address"),
    ("255.255.255.255/32", "broadcast address"),
    ("::/128", "unspecified address"),
    ("::1/128", "loopback address"),
    ("::/96", "IPv4-compatible IPv6 address"),
    ("::ffff:0:0/96", "IPv4-mapped IPv6 address"),
    ("64:ff9b::/96", "NAT64 address"),
    ("64:ff9b:1::/48", "NAT64 address"),
    ("100::/64", "discard-only address"),
    ("2001:db8::/32", "documentation address"),
    ("fc00::/7", "unique local (private) address"),
    ("fe80::/10", "link-local address"),
    ("fec0::/10", "site-local address"),
    ("ff00::/8", "multicast address"),
)
_BLOCKED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), why) for cidr, why in _BLOCKED
)
# IPv6 is allowed only within global unicast; the named ranges above and the "not globally
# routable" rule then take out its special parts.
GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


class ForbiddenAddressError(ValueError):
    """The URL or host may not be contacted. The message names the host, address and reason."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """What may be contacted.

    ``allow`` lists networks that are reachable although they would be refused (a test server on
    127.0.0.1, an in-cluster receiver); metadata addresses stay refused. ``allow_http`` permits
    plain ``http://`` besides ``https://`` (tests only).
    """

    allow: tuple[IPNetwork, ...] = ()
    allow_http: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Policy:
        """``COMPOSE_NETGUARD_ALLOW_CIDRS`` (comma-separated CIDRs) and
        ``COMPOSE_NETGUARD_ALLOW_HTTP`` (``1``/``true``)."""
        env = os.environ if environ is None else environ
        allow = parse_networks(env.get(ALLOW_ENV, ""), field=ALLOW_ENV)
        allow_http = env.get(ALLOW_HTTP_ENV, "").strip().lower() in {"1", "true", "yes"}
        return cls(allow=allow, allow_http=allow_http)

    @property
    def schemes(self) -> frozenset[str]:
        return frozenset({"https", "http"}) if self.allow_http else frozenset({"https"})


@dataclasses.dataclass(frozen=True)
class Destination:
    """A checked URL: connect to ``ip``:``port``; send ``host`` as Host header and TLS SNI."""

    url: str
    scheme: str
    host: str
    port: int
    ip: IPAddress
    # Path with query string, as sent in the request line.
    target: str

    @property
    def ip_literal(self) -> str:
        """The address as it appears in a URL or connection call (IPv6 in brackets)."""
        # An address's version is 4 or 6, so `>=` for `==` cannot change the result.
        bracketed = self.ip.version == 6  # pragma: no mutate: *_Eq_GtE
        return f"[{self.ip}]" if bracketed else str(self.ip)


def parse_networks(text: str | Iterable[str], *, field: str = "allow") -> tuple[IPNetwork, ...]:
    """Parse CIDRs (a comma-separated string or an iterable); ValueError names the bad entry."""
    items = text.split(",") if isinstance(text, str) else list(text)
    networks: list[IPNetwork] = []
    for item in items:
        entry = item.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as error:
            raise ValueError(f"{field}: {entry!r} is not a CIDR network ({error})") from None
    return tuple(networks)


def forbidden_reason(ip: IPAddress, policy: Policy = Policy()) -> str | None:
    """Why ``ip`` may not be contacted under ``policy``, or None when it may."""
    plain = _without_scope(ip)
    if plain in METADATA_ADDRESSES:
        return "cloud metadata address"
    if any(plain in network for network in policy.allow):
        return None
    for network, why in _BLOCKED_NETWORKS:
        # `in` is already False across versions (ipaddress compares the versions first), so
        # the version test only saves a call: `<=`, `>=` or `is` (4 and 6 are cached ints) for
        # its `==` cannot change the result.
        if (
            plain.version == network.version  # pragma: no mutate: *_Eq_LtE, *_Eq_GtE, *_Eq_Is
            and plain in network
        ):
            return why
    if isinstance(plain, ipaddress.IPv6Address):
        if plain not in GLOBAL_UNICAST:
            return "IPv6 address outside global unicast (2000::/3)"
        embedded = plain.sixtofour or (plain.teredo[1] if plain.teredo else None)
        if embedded is not None:
            inner = forbidden_reason(embedded, policy)
            if inner is not None:
                return f"IPv6 address embedding a forbidden IPv4 address ({inner})"
    if not plain.is_global:
        return "not globally routable"
    return None


def check_ip(
    ip: str | IPAddress, policy: Policy = Policy(), *, host: str | None = None
) -> IPAddress:
    """The parsed address, or ForbiddenAddressError naming host, address and reason."""
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    reason = forbidden_reason(address, policy)
    if reason is not None:
        name = f"{host} -> {address}" if host and host != str(address) else str(address)
        raise ForbiddenAddressError(f"{name}: {reason}")
    return address


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the system resolver (getaddrinfo), every address family."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def resolve(
    host: str, port: int, policy: Policy = Policy(), *, resolver: Resolver = system_resolver
) -> IPAddress:
    """Resolve ``host`` and return the one address to connect to.

    Every address the name resolves to must be allowed; one forbidden answer refuses the host, so a
    name that resolves to both a public and a private address cannot be used to reach the private
    one. A name that is not a valid host name (IDNA refuses it: ``a..b``, a label over 63
    characters) is refused as forbidden too. Raises ForbiddenAddressError, or OSError
    (socket.gaierror) when the name does not resolve.
    """
    bare = host.strip("[]")
    try:
        literal: IPAddress | None = ipaddress.ip_address(bare)
    except ValueError:
        literal = None
    if literal is not None:
        return check_ip(literal, policy, host=host)
    try:
        bare.encode("idna")
        answers = list(resolver(bare, port))
    except UnicodeError as error:
        raise ForbiddenAddressError(f"{host}: not a valid host name ({error})") from None
    if not answers:
        raise OSError(f"{host}: the name resolved to no address")
    checked = [check_ip(answer, policy, host=host) for answer in answers]
    return checked[0]


def check_url(
    url: str, policy: Policy = Policy(), *, resolver: Resolver = system_resolver
) -> Destination:
    """Check a URL before connecting (call again for every redirect hop).

    Refuses other schemes, credentials in the URL, and forbidden addresses; returns the pinned
    destination. Raises ForbiddenAddressError, or OSError when the host does not resolve.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in policy.schemes:
        allowed = ", ".join(sorted(policy.schemes))
        raise ForbiddenAddressError(f"{url}: scheme {scheme or '(none)'!r} not allowed ({allowed})")
    if parts.username is not None or parts.password is not None:
        raise ForbiddenAddressError(f"{_redact(parts)}: credentials in URLs are not allowed")
    host = parts.hostname
    if not host:
        raise ForbiddenAddressError(f"{url}: no host")
    try:
        # scheme is "https" or "http" here (policy.schemes), so `>=` for `==` cannot change it.
        port = parts.port or (443 if scheme == "https" else 80)  # pragma: no mutate: *_Eq_GtE
    except ValueError:
        raise ForbiddenAddressError(f"{url}: invalid port") from None
    ip = resolve(host, port, policy, resolver=resolver)
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return Destination(url=url, scheme=scheme, host=host, port=port, ip=ip, target=target)


def _without_scope(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return ipaddress.IPv6Address(str(ip).partition("%")[0])
    return ip


def _redact(parts: urllib.parse.SplitResult) -> str:
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
