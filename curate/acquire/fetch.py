"""One hardened HTTP(S) GET for every URL curate downloads.

Guarantees, whatever the server does:

- a wall-clock deadline per URL (DNS, connect, TLS, every redirect hop, headers and body together),
  enforced by one process-wide watchdog thread that shuts a socket down at its deadline, so a
  server dripping one byte a second is cut off; each socket operation also times out at the
  remaining time;
- a body size cap: refused on a ``Content-Length`` over the cap, else reading stops once the cap
  is exceeded (at most cap+1 bytes are ever buffered);
- an address policy checked at connect time on the resolved IP (after DNS, numeric host forms
  included, on every redirect hop): loopback, private, link-local, multicast, reserved,
  unspecified and shared addresses (and IPv6 forms embedding them) are refused unless allowed;
  the socket connects to the vetted IP, so a second DNS answer cannot swap it, while TLS still
  verifies the certificate and sends SNI for the host name;
- redirects followed by hand (http/https only, each hop re-checked, loops and long chains end);
- ``X-Robots-Tag`` directives honoured with img2dataset's semantics (user-agent scoped ones too);
- error text that is a fixed phrase plus a status code or exception type: never a response body
  or a server's reason phrase.

Only the standard library is used: the policy must sit between DNS and ``connect()``, which
urllib and requests do not expose without replacing their connection classes anyway.
"""

from __future__ import annotations

import _socket
import contextlib
import heapq
import http.client
import ipaddress
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import curate

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REDIRECTS = (301, 302, 303, 307, 308)
MAX_ERROR_CHARS = 200
_CHUNK = 64 * 1024
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPAT = ipaddress.ip_network("::/96")


class FetchError(Exception):
    """A refused or failed fetch: ``code`` is a reason code of ``curate.reasons``; ``message`` is bounded."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message[:MAX_ERROR_CHARS]


@dataclass(frozen=True)
class AddressPolicy:
    """Which resolved IPs may be connected to: public ones, plus ``allowed`` networks (or all)."""

    allow_all: bool = False
    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_setting(cls, setting: bool | Iterable[str]) -> AddressPolicy:
        """``True`` allows every address, ``False`` public ones only, a list of CIDRs those too."""
        if isinstance(setting, bool):
            return cls(allow_all=setting)
        return cls(allowed=tuple(ipaddress.ip_network(c, strict=False) for c in setting))

    def permits(self, ip: IPAddress) -> bool:
        """True when ``ip`` (and any IPv4 address it embeds) is public or explicitly allowed."""
        if self.allow_all:
            return True
        forms = [ip, *_embedded_v4(ip)]
        if any(any(f in net for net in self.allowed) for f in forms):
            return True
        return all(_is_public(f) for f in forms)


def _embedded_v4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    if ip.version == 4:
        return []
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64 or ip in _V4_COMPAT:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _is_public(ip: IPAddress) -> bool:
    special = (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (ip.version == 6 and ip.is_site_local)
    )
    return ip.is_global and not special  # is_global excludes 100.64.0.0/10 (shared) too


@dataclass(frozen=True)
class FetchConfig:
    """Everything :func:`fetch` needs; built once per shard from the recipe's acquire section."""

    deadline_s: float = 20.0
    max_bytes: int = 32 * 1024 * 1024
    max_redirects: int = 5
    addresses: AddressPolicy = field(default_factory=AddressPolicy)
    user_agent: str = f"curate/{curate.__version__}"
    user_agent_token: str | None = None
    disallowed_directives: frozenset[str] = frozenset()


def user_agent(contact_url: str | None, token: str | None) -> str:
    """``curate/VERSION (+CONTACT; TOKEN)``: names the tool, who runs it and the robots token."""
    extras = [x for x in (f"+{contact_url}" if contact_url else None, token) if x]
    return f"curate/{curate.__version__}" + (f" ({'; '.join(extras)})" if extras else "")


class _Watchdog:
    """One daemon thread that shuts down the socket of every fetch whose deadline has passed."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Budget]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, budget: _Budget) -> None:
        with self._cond:
            heapq.heappush(self._heap, (budget.deadline, next(self._seq), budget))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="curate-fetch-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, budget = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            budget.expire()


_WATCHDOG = _Watchdog()
_DNS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="curate-dns")


class _Budget:
    """The deadline of one fetch and the socket it currently reads; the watchdog expires it."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.expired = False
        self.done = False

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise FetchError("download_timeout", "deadline exceeded")
        return left

    def hold(self, sock: socket.socket | None) -> None:
        """Make ``sock`` the one the watchdog shuts down at the deadline (None when closed)."""
        with self._lock:
            self._sock = sock
            if sock is not None and self.expired:
                _shutdown(sock)

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            if self._sock is not None:
                _shutdown(self._sock)


def _shutdown(sock: socket.socket) -> None:
    """Shut the OS socket down (wakes a blocked recv); bypasses SSLSocket's TLS-level shutdown."""
    with contextlib.suppress(OSError):
        _socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _connect(ips: list[IPAddress], port: int, budget: _Budget) -> socket.socket:
    last: OSError | None = None
    for ip in ips:
        sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
        budget.hold(sock)
        try:
            sock.settimeout(budget.remaining())
            sock.connect((str(ip), port))
            return sock
        except OSError as err:
            sock.close()
            budget.hold(None)
            last = err
    raise last if last is not None else OSError("no address")


class _HTTPConnection(http.client.HTTPConnection):
    """HTTP to a vetted IP; ``Host`` stays the URL's host name."""

    def __init__(self, host: str, port: int, ips: list[IPAddress], budget: _Budget) -> None:
        super().__init__(host, port, timeout=budget.remaining())
        self._ips, self._budget = ips, budget

    def connect(self) -> None:
        self.sock = _connect(self._ips, self.port, self._budget)


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a vetted IP, certificate verified and SNI sent for the URL's host name."""

    def __init__(self, host: str, port: int, ips: list[IPAddress], budget: _Budget) -> None:
        super().__init__(host, port, timeout=budget.remaining(), context=_TLS)
        self._ips, self._budget = ips, budget

    def connect(self) -> None:
        raw = _connect(self._ips, self.port, self._budget)
        sock = self._context.wrap_socket(raw, server_hostname=self.host, do_handshake_on_connect=False)
        self._budget.hold(sock)
        sock.settimeout(self._budget.remaining())
        sock.do_handshake()
        self.sock = sock


_TLS = ssl.create_default_context()


def _resolve(host: str, port: int, budget: _Budget) -> list[IPAddress]:
    """Every address ``host`` resolves to (numeric forms such as ``2130706433`` included), within the deadline."""
    future = _DNS.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=budget.remaining())
    except FutureTimeout:
        raise FetchError("download_timeout", "deadline exceeded in DNS lookup") from None
    except (OSError, UnicodeError) as err:
        raise FetchError("download_error", f"DNS lookup failed ({type(err).__name__})") from None
    ips: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in ips:
            ips.append(ip)
    return ips


def is_disallowed(header_values: list[str], token: str | None, directives: frozenset[str]) -> bool:
    """img2dataset's ``X-Robots-Tag`` rule: a listed directive, unscoped or scoped to our token."""
    for value in header_values:
        scoped = value.split(":", 1)
        found = {x.strip().lower() for x in scoped[-1].split(",")}
        ua = scoped[0].strip().lower() if len(scoped) == 2 else None
        if (ua is None or ua == token) and found & directives:
            return True
    return False


def fetch(url: str, cfg: FetchConfig) -> bytes:
    """GET ``url`` under ``cfg``'s deadline, size cap, address policy and robots rules.

    Returns the body; raises :class:`FetchError` with a reason code otherwise.
    """
    budget = _Budget(cfg.deadline_s)
    _WATCHDOG.watch(budget)
    try:
        return _follow(url, cfg, budget)
    except FetchError:
        raise
    except Exception as err:
        if budget.expired or time.monotonic() >= budget.deadline:
            raise FetchError("download_timeout", f"deadline of {cfg.deadline_s:g}s exceeded") from None
        raise FetchError("download_error", f"connection failed ({type(err).__name__})") from None
    finally:
        with budget._lock:
            budget.done = True


def _follow(url: str, cfg: FetchConfig, budget: _Budget) -> bytes:
    seen = {url}
    for _hop in range(cfg.max_redirects + 1):
        status, location, body = _get(url, cfg, budget)
        if location is None:
            return body
        url = urljoin(url, location)
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise FetchError("blocked_redirect", f"HTTP {status} redirect to a non-http(s) URL refused")
        if url in seen:
            raise FetchError("download_error", "redirect loop")
        seen.add(url)
    raise FetchError("download_error", f"more than {cfg.max_redirects} redirects")


def _get(url: str, cfg: FetchConfig, budget: _Budget) -> tuple[int, str | None, bytes]:
    """One hop: (status, redirect location or None, body)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("download_error", "not an http(s) URL")
    port = parts.port or (443 if scheme == "https" else 80)
    ips = [ip for ip in _resolve(parts.hostname, port, budget) if cfg.addresses.permits(ip)]
    if not ips:
        raise FetchError("blocked_address", "host resolves to a non-public address (acquire.allow_private_addresses)")
    cls = _HTTPSConnection if scheme == "https" else _HTTPConnection
    conn = cls(parts.hostname, port, ips, budget)
    resp = None
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers={"User-Agent": cfg.user_agent, "Accept": "image/*,*/*;q=0.8"})
        sock = conn.sock  # getresponse() drops conn.sock when the server closes after the body
        sock.settimeout(budget.remaining())
        resp = conn.getresponse()
        if resp.status in REDIRECTS and resp.getheader("Location"):
            return resp.status, resp.getheader("Location"), b""
        if not 200 <= resp.status < 300:  # errors, and 3xx without a Location
            raise FetchError("download_error", f"HTTP {resp.status}")
        if cfg.disallowed_directives and is_disallowed(
            resp.headers.get_all("X-Robots-Tag", []), cfg.user_agent_token, cfg.disallowed_directives
        ):
            raise FetchError("robots_disallowed", "use of image disallowed by X-Robots-Tag directive")
        return resp.status, None, _read_body(resp, sock, cfg.max_bytes, budget)
    finally:
        budget.hold(None)
        if resp is not None:
            resp.close()
        conn.close()


def _read_body(resp: http.client.HTTPResponse, sock: socket.socket, cap: int, budget: _Budget) -> bytes:
    length = resp.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > cap:
        raise FetchError("too_large_download", f"Content-Length over the {cap}-byte cap")
    body = bytearray()
    while True:
        sock.settimeout(budget.remaining())
        chunk = resp.read(min(_CHUNK, cap + 1 - len(body)))
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > cap:
            raise FetchError("too_large_download", f"body over the {cap}-byte cap")
