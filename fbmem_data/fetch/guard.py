"""The network layer under `fbmem fetch`: where a request may connect, and when it must stop.

httpx/httpcore bound each connect and each read, not a whole request: a server that drips its
headers one byte at a time keeps a request alive forever. Here every request carries one overall
deadline (connect + headers + body, across redirects), enforced twice:

- every socket operation's timeout is clamped to the time left, and a read after the deadline
  fails at once;
- a watchdog thread shuts down any socket whose request is past its deadline (or whose run was
  cancelled by Ctrl-C/SIGTERM), which wakes a read blocked in the kernel.

Destinations: a host name is resolved here, each address is checked, and the socket connects to
that checked address (not to the name again), so DNS rebinding cannot swap in a private address
between the check and the connect. Since every redirect hop opens its connection through here,
every hop is checked. Loopback, private, link-local, multicast, unspecified, reserved and other
not globally routable addresses are refused unless allowed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
import typing
from collections.abc import Iterable, Sequence

import httpcore

_local = threading.local()  # per worker thread: the deadline of the request it is making
_WATCHDOG_TICK_S = 0.1


class BlockedDestination(Exception):
    """The destination address is not allowed (raised through httpx unchanged)."""


class RequestCancelled(Exception):
    """The run was cancelled (Ctrl-C / SIGTERM) while this request was open."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def blocked_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public destination, or None if it is one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for attr, reason in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(ip, attr):
            return reason
    if not ip.is_global:  # 100.64.0.0/10 (carrier-grade NAT) and friends
        return "not globally routable"
    return None


def set_deadline(deadline: float | None) -> None:
    """The monotonic time by which the calling thread's current request must be done."""
    _local.deadline = deadline


def _remaining(timeout: float | None) -> float | None:
    deadline = getattr(_local, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    return left if timeout is None else min(timeout, left)


class Guard:
    """Per fetch run: the destination policy, the open sockets, and the watchdog over them."""

    def __init__(self, allow_private: bool = False, allow_networks: Sequence[str] = ()) -> None:
        self.allow_private = allow_private
        self.allow_networks: list[IPNetwork] = [ipaddress.ip_network(n, strict=False) for n in allow_networks]
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._sockets: dict[socket.socket, float | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fbmem-fetch-watchdog", daemon=True)
        self._thread.start()

    # -- policy --------------------------------------------------------------------------------
    def check(self, ip: IPAddress) -> str | None:
        """None if connecting to `ip` is allowed, else the reason it is refused."""
        reason = blocked_reason(ip)
        if reason is None or self.allow_private:
            return None
        if any(ip in net for net in self.allow_networks if net.version == ip.version):
            return None
        return reason

    # -- sockets -------------------------------------------------------------------------------
    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets[sock] = getattr(_local, "deadline", None)

    def touch(self, sock: socket.socket) -> None:
        """A pooled connection is reused by a new request: it now runs under that deadline."""
        with self._lock:
            if sock in self._sockets:
                self._sockets[sock] = getattr(_local, "deadline", None)

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.pop(sock, None)

    def cancel(self) -> None:
        """Stop every open request now (the run is being interrupted)."""
        self.cancelled.set()
        with self._lock:
            socks = list(self._sockets)
        for sock in socks:
            _shutdown(sock)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _watch(self) -> None:
        while not self._stop.wait(_WATCHDOG_TICK_S):
            now = time.monotonic()
            with self._lock:
                late = [s for s, d in self._sockets.items() if d is not None and now > d]
            for sock in late:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    # shutdown (not close) wakes a recv blocked in another thread; that thread then closes it.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _resolve(host: str, port: int, timeout: float | None) -> list[tuple[int, tuple[typing.Any, ...]]]:
    """getaddrinfo under the deadline (it has no timeout of its own: run it in a helper thread)."""
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    if literal:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(family, addr) for family, _, _, _, addr in infos]
    box: dict[str, typing.Any] = {}

    def work() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc

    worker = threading.Thread(target=work, name="fbmem-fetch-dns", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise httpcore.ConnectTimeout(f"DNS lookup of {host} did not finish in time")
    if "error" in box:
        raise httpcore.ConnectError(f"DNS lookup of {host} failed: {box['error']}")
    return [(family, addr) for family, _, _, _, addr in box["infos"]]


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's sync backend with address checks and the overall deadline."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        if self.guard.cancelled.is_set():
            raise RequestCancelled("the run was interrupted")
        left = _remaining(timeout)
        if left is not None and left <= 0:
            raise httpcore.ConnectTimeout("overall deadline passed before connecting")
        addresses = _resolve(host, port, left)
        allowed, refused = [], []
        for family, addr in addresses:
            ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
            reason = self.guard.check(ip)
            (refused if reason else allowed).append((family, addr, ip, reason))
        if not allowed:
            shown = ", ".join(f"{ip} ({reason})" for _, _, ip, reason in refused[:3]) or "no address"
            raise BlockedDestination(
                f"{host} resolves to {shown}; pass --allow-private to fetch from such hosts"
            )
        last_error: Exception | None = None
        for family, addr, ip, _ in allowed:
            sock = socket.socket(family, socket.SOCK_STREAM)
            self.guard.track(sock)
            try:
                for option in socket_options or ():
                    sock.setsockopt(*option)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if local_address is not None:
                    sock.bind((local_address, 0))
                left = _remaining(timeout)
                if left is not None and left <= 0:
                    raise TimeoutError("overall deadline passed")
                sock.settimeout(left)
                sock.connect(addr)
                peer = ipaddress.ip_address(sock.getpeername()[0].split("%", 1)[0])
                if peer != ip:  # cannot happen for a direct connect; refuse rather than trust it
                    raise BlockedDestination(f"{host}: connected to {peer}, not the checked {ip}")
                return GuardedStream(sock, self.guard)
            except BlockedDestination:
                self._drop(sock)
                raise
            except TimeoutError as exc:
                self._drop(sock)
                last_error = httpcore.ConnectTimeout(f"connect to {ip} timed out: {exc}")
            except OSError as exc:
                self._drop(sock)
                last_error = httpcore.ConnectError(f"connect to {ip} failed: {exc}")
        assert last_error is not None
        raise last_error

    def _drop(self, sock: socket.socket) -> None:
        self.guard.forget(sock)
        sock.close()

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: typing.Any = None
    ) -> typing.Any:
        raise httpcore.ConnectError("unix sockets are not fetched")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class GuardedStream(httpcore.NetworkStream):
    """A socket whose every operation ends by the request's overall deadline."""

    def __init__(self, sock: socket.socket, guard: Guard) -> None:
        self._sock = sock
        self._guard = guard

    def _timeout(self, timeout: float | None, error: type[Exception]) -> float | None:
        if self._guard.cancelled.is_set():
            raise RequestCancelled("the run was interrupted")
        self._guard.touch(self._sock)
        left = _remaining(timeout)
        if left is not None and left <= 0:
            raise error("overall deadline passed")
        return left

    def _failed(
        self, exc: OSError, timeout_error: type[Exception], other_error: type[Exception]
    ) -> Exception:
        if self._guard.cancelled.is_set():
            return RequestCancelled("the run was interrupted")
        if isinstance(exc, TimeoutError):
            return timeout_error(str(exc) or "timed out")
        deadline = getattr(_local, "deadline", None)
        if deadline is not None and time.monotonic() >= deadline:  # the watchdog shut the socket
            return timeout_error("overall deadline passed")
        return other_error(str(exc))

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._sock.settimeout(self._timeout(timeout, httpcore.ReadTimeout))
        try:
            data = self._sock.recv(max_bytes)
        except OSError as exc:
            raise self._failed(exc, httpcore.ReadTimeout, httpcore.ReadError) from exc
        deadline = getattr(_local, "deadline", None)
        if not data and deadline is not None and time.monotonic() >= deadline:
            raise httpcore.ReadTimeout("overall deadline passed")  # EOF caused by the watchdog
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        while buffer:
            self._sock.settimeout(self._timeout(timeout, httpcore.WriteTimeout))
            try:
                n = self._sock.send(buffer)
            except OSError as exc:
                raise self._failed(exc, httpcore.WriteTimeout, httpcore.WriteError) from exc
            buffer = buffer[n:]

    def close(self) -> None:
        self._guard.forget(self._sock)
        self._sock.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        self._sock.settimeout(self._timeout(timeout, httpcore.ConnectTimeout))
        try:
            tls = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)
        except OSError as exc:
            error = self._failed(exc, httpcore.ConnectTimeout, httpcore.ConnectError)
            self.close()
            raise error from exc
        self._guard.forget(self._sock)
        self._guard.track(tls)
        return GuardedStream(tls, self._guard)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "ssl_object" and isinstance(self._sock, ssl.SSLSocket):
            return self._sock._sslobj  # type: ignore[attr-defined]
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":
            from httpcore._utils import is_socket_readable

            return is_socket_readable(self._sock)
        return None
