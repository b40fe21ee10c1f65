"""Outbound addresses a tenant's upstream URL may reach: public ones only.

A tenant who names a URL for its wrapped agent must not reach what sits beside the
server: the cloud metadata service, the database, the cluster's private network. Every
address a host resolves to is checked (`refusal`), and the connection is made to the
address that was checked (`GuardedNetworkBackend`: resolution and connect are one step
inside the HTTP client), so a DNS answer that changes between a check and the connect
(rebinding) cannot slip through. Plain Python; the upstream client plugs the backend in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
# Names of cloud metadata services (they also resolve to link-local addresses, refused
# anyway; the names are refused before any lookup).
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.com",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "100-100-100-200.aliyun",
    }
)
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


class AddressRefused(httpcore.ConnectError):
    """The host resolves to an address a tenant's upstream may not reach."""


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries: mapped, 6to4, Teredo, NAT64."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found += list(ip.teredo)
    if ip in NAT64 or ip in NAT64_LOCAL:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def refusal(address: str | IPAddress) -> str | None:
    """Why a tenant's upstream may not connect to `address`, or None when it may."""
    try:
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in _embedded_v4(ip):
            why = refusal(inner)
            if why:
                return f"{why} (carried in {ip})"
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local (cloud metadata lives here)"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "site-local"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT, "shared (CGNAT)"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable"),
    )
    for hit, what in checks:
        if hit:
            return f"{ip} is {what}"
    return None


def refusal_of_all(addresses: Iterable[str]) -> str | None:
    """The first refusal among `addresses` (all must pass), or None."""
    for a in addresses:
        why = refusal(a)
        if why:
            return why
    return None


def host_refusal(host: str) -> str | None:
    """Why `host` (a name or an IP literal, as a URL carries it) is refused before any
    lookup: metadata and local names, non-public literals. None: resolve and check."""
    name = host.strip("[]").rstrip(".").lower()
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        if name in METADATA_NAMES or name == "localhost" or name.endswith(LOCAL_SUFFIXES):
            return f"{name} is a local or metadata name"
        if name.isdigit() or name.startswith("0x"):  # 2130706433, 0x7f000001: loopback spelled
            return f"{name} is a numeric host"
        return None
    return refusal(name)


def url_shape_refusal(url: str, *, allow_http: bool) -> str | None:
    """Why `url` is not an upstream base URL (scheme, host present, no credentials, query
    or fragment, a valid port), or None. Says nothing about where the host is: the
    operator's URLs (serve_app/upstream_registry.py) may be private, a tenant's may not."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        schemes = "http(s)" if allow_http else "https"
        return f"must be an {schemes} URL such as https://host/v1"
    if parts.scheme == "http" and not allow_http:
        return "must use https (the operator has not allowed plain http)"
    if parts.username or parts.password or parts.query or parts.fragment:
        return "must not carry credentials, a query or a fragment"
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        return "has an invalid port"
    return None


def tenant_url_refusal(url: str, *, allow_http: bool) -> str | None:
    """Why a tenant may not name `url` as its upstream (syntax, scheme, host), or None.
    The addresses the host resolves to are checked again at every connect."""
    return url_shape_refusal(url, allow_http=allow_http) or host_refusal(
        str(urlsplit(url).hostname)
    )


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6), in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for *_, sockaddr in infos:
        if sockaddr[0] not in seen:
            seen.append(str(sockaddr[0]))
    return seen


async def checked_addresses(host: str, port: int, resolve: Resolver = system_resolve) -> list[str]:
    """The addresses to connect to for `host`; raises AddressRefused unless every one is
    public (a name with one private answer among public ones is refused)."""
    why = host_refusal(host)
    if why:
        raise AddressRefused(f"upstream host refused: {why}")
    try:
        addresses = await resolve(host.strip("[]"), port)
    except OSError as exc:
        raise httpcore.ConnectError(f"upstream host {host} does not resolve") from exc
    if not addresses:
        raise httpcore.ConnectError(f"upstream host {host} does not resolve")
    why = refusal_of_all(addresses)
    if why:
        raise AddressRefused(f"upstream host {host} refused: {why}")
    return addresses


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the address check in `connect_tcp`: the host is
    resolved once, every address checked, and the socket opened to a checked address.
    TLS still verifies the certificate against the URL's host name (httpcore passes it as
    the server name), so pinning the address does not weaken https."""

    def __init__(self, resolve: Resolver = system_resolve) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._resolve = resolve
        self.connects: list[tuple[str, str, int]] = []  # (host, address, port), for tests

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await checked_addresses(host, port, self._resolve)
        last: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            self.connects.append((host, address, port))
            return stream
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("a tenant's upstream may not use a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
