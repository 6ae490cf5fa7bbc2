"""Hostile loopback servers for the reliability tests. Nothing leaves the loopback interface."""

from __future__ import annotations

import contextlib
import io
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from PIL import Image


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class RawServer:
    """A TCP server on a loopback address whose handler writes raw bytes (so it can misbehave)."""

    host: str
    port: int
    stop: threading.Event
    hits: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def count(self, path: str) -> int:
        return self.hits.count(path)


Route = Callable[[socket.socket, threading.Event], None]


def _answer(body: bytes, content_type: str = "image/png", extra: str = "", code: str = "200 OK") -> Route:
    def route(sock: socket.socket, stop: threading.Event) -> None:
        head = f"HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
        sock.sendall(head.encode() + body)

    return route


def drip_headers(sock: socket.socket, stop: threading.Event) -> None:
    """A status line and headers that never end, one byte every 0.1 s."""
    for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Drip: " + b"a" * 10_000_000:
        if stop.wait(0.1):
            return
        sock.sendall(bytes([byte]))


def endless_body(sock: socket.socket, stop: threading.Event) -> None:
    """Valid headers, then a body without length that never ends (slowly: below the read timeout)."""
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
    while not stop.wait(0.05):
        sock.sendall(b"\x00" * 64)


def redirect_to(location: str) -> Route:
    return _answer(b"", "text/plain", f"Location: {location}\r\n", code="302 Found")


def serve(host: str, routes: dict[str, Route]) -> Iterator[RawServer]:
    stop = threading.Event()
    server_box: dict[str, RawServer] = {}

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            sock.settimeout(30)
            data = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                path = data.split(b" ", 2)[1].decode() if data.count(b" ") >= 2 else "/"
                server_box["s"].hits.append(path)
                route = routes.get(path, _answer(b"unknown", "text/plain", code="404 Not Found"))
                route(sock, stop)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    httpd = Server((host, 0), Handler)
    server_box["s"] = RawServer(host, httpd.server_address[1], stop)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server_box["s"]
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def secret_server() -> Iterator[RawServer]:
    """An 'internal' server on 127.0.0.2 holding a secret image."""
    yield from serve("127.0.0.2", {"/secret.png": _answer(png_bytes((1, 2, 3)))})


@pytest.fixture
def hostile_server(secret_server: RawServer) -> Iterator[RawServer]:
    routes: dict[str, Route] = {
        "/drip-headers": drip_headers,
        "/endless-body": endless_body,
        "/good.png": _answer(png_bytes()),
        "/to-private": redirect_to(secret_server.url("/secret.png")),
    }
    for i in range(4):
        routes[f"/n/{i}.png"] = _answer(png_bytes((i * 40, 10, 10)))
    yield from serve("127.0.0.1", routes)


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """`fbmem ARGS` in this process (a subprocess costs seconds of start-up on a loaded machine).
    An exception escaping the CLI is reported as a traceback, as the real command would print it."""
    import contextlib
    import io
    import traceback

    from fbmem_data.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:
            traceback.print_exc()
            code = 1
    return CliResult(code, out.getvalue(), err.getvalue())
