"""`fbmem fetch` against a real HTTP server on 127.0.0.1 (started here, in a thread).

Nothing leaves the loopback interface: every URL points at the local server (or a closed local
port), and the client ignores proxy settings (trust_env=False).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from fbmem_data.errors import InputError
from fbmem_data.fetch import fetch
from fbmem_data.fetch.validate import check_image_bytes
from fbmem_data.workspace import Workspace

MAX_BYTES = 100_000


def _image_bytes(fmt: str, color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def _noise_png(n_bytes: int) -> bytes:
    # Random pixels do not compress: a PNG well above n_bytes.
    side = int((n_bytes / 3) ** 0.5) + 16
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, format="PNG")
    return buf.getvalue()


GOOD_PNG = _image_bytes("PNG", (200, 30, 30))
GOOD_JPG = _image_bytes("JPEG", (30, 200, 30))
REDIRECT_TARGET = _image_bytes("PNG", (30, 30, 200), (32, 32))
FLAKY_PNG = _image_bytes("PNG", (90, 90, 90))
HOLD_PNG = _image_bytes("PNG", (10, 120, 240))
BIG_PNG = _noise_png(3 * MAX_BYTES)
HTML = b"<!DOCTYPE html><html><body>Not found, but friendly</body></html>"


@dataclass
class ServerState:
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    flaky_calls: int = 0
    release_hold: threading.Event = field(default_factory=threading.Event)
    numbered: dict[str, bytes] = field(default_factory=dict)


class Handler(BaseHTTPRequestHandler):
    state: ServerState  # set per server below

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        del format, args

    def _send(self, code: int, body: bytes, content_type: str, length: bool = True) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        with self.state.lock:
            self.state.requests.append(path)
        if path == "/good.png":
            self._send(200, GOOD_PNG, "image/png")
        elif path == "/good.jpg":
            self._send(200, GOOD_JPG, "image/jpeg")
        elif path == "/mislabeled":  # an image under a text header: the bytes decide
            self._send(200, GOOD_JPG, "text/plain")
        elif path == "/missing.png":
            self._send(404, b"no such file", "text/plain")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/target.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/target.png":
            self._send(200, REDIRECT_TARGET, "image/png")
        elif path == "/slow.png":
            time.sleep(1.5)
            self._send(200, GOOD_PNG, "image/png")
        elif path == "/truncated.png":
            self._send(200, GOOD_PNG[: len(GOOD_PNG) // 2], "image/png")
        elif path == "/truncated.jpg":
            self._send(200, GOOD_JPG[: len(GOOD_JPG) - 200], "image/jpeg")
        elif path == "/page.html":
            self._send(200, HTML, "text/html; charset=utf-8")
        elif path == "/fake.png":  # HTML under an image header
            self._send(200, HTML, "image/png")
        elif path == "/big.png":  # announced too large
            self._send(200, BIG_PNG, "image/png")
        elif path == "/big-stream.png":  # no Content-Length: the streaming cap must stop it
            self._send(200, BIG_PNG, "image/png", length=False)
        elif path == "/error500":
            self._send(500, b"boom", "text/plain")
        elif path == "/flaky.png":
            with self.state.lock:
                self.state.flaky_calls += 1
                first = self.state.flaky_calls == 1
            if first:
                self._send(503, b"later", "text/plain")
            else:
                self._send(200, FLAKY_PNG, "image/png")
        elif path == "/hold.png":  # holds a worker until the test releases it
            self.state.release_hold.wait(timeout=60)
            self._send(200, HOLD_PNG, "image/png")
        elif path.startswith("/n/"):
            self._send(200, self.state.numbered[path], "image/png")
        else:
            self._send(404, b"unknown", "text/plain")


@dataclass
class LocalServer:
    base: str
    state: ServerState

    def url(self, path: str) -> str:
        return self.base + path

    def hits(self, path: str) -> int:
        with self.state.lock:
            return self.state.requests.count(path)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    state = ServerState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield LocalServer(f"http://127.0.0.1:{httpd.server_address[1]}", state)
    finally:
        state.release_hold.set()
        httpd.shutdown()
        httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _latest(ws: Workspace) -> dict[str, dict]:
    rows = ws.sql("SELECT * FROM fetch_latest").to_pylist()
    return {r["url"]: r for r in rows}


FAST = {"timeout": 0.5, "retries": 1, "backoff_s": 0.01, "max_bytes": MAX_BYTES, "concurrency": 4, "allow_private": True}


def test_every_kind_of_answer_gets_the_right_status(workspace: Workspace, server: LocalServer, tmp_path: Path) -> None:
    expected = {
        "/good.png": ("ok", 200, 1),
        "/good.jpg": ("ok", 200, 1),
        "/mislabeled": ("ok", 200, 1),
        "/missing.png": ("http_error", 404, 1),  # 4xx: not retried
        "/redirect": ("ok", 200, 1),
        "/slow.png": ("timeout", None, 2),  # retried once, then given up
        "/truncated.png": ("decode_error", 200, 1),
        "/truncated.jpg": ("decode_error", 200, 1),
        "/page.html": ("not_image", 200, 1),
        "/fake.png": ("not_image", 200, 1),
        "/big.png": ("too_large", 200, 1),
        "/big-stream.png": ("too_large", 200, 1),
        "/error500": ("http_error", 500, 2),  # 5xx: retried
        "/flaky.png": ("ok", 200, 2),  # 503 then 200
    }
    refused = f"http://127.0.0.1:{_closed_port()}/x.png"
    urls = [server.url(p) for p in expected] + [refused, "ftp://127.0.0.1/x.png"]
    url_file = tmp_path / "urls.txt"
    url_file.write_text("# training images\n\n" + "\n".join(urls) + "\n")

    summary = fetch(workspace, urls_file=url_file, **FAST)

    latest = _latest(workspace)
    assert len(latest) == len(urls) == summary.n_urls
    for path, (status, code, attempts) in expected.items():
        row = latest[server.url(path)]
        assert (row["status"], row["http_status"], row["attempts"]) == (status, code, attempts), (path, row)
        assert row["prompt_id"] is None and row["run_id"] == summary.run_id
        assert (row["error"] is None) == (status == "ok"), row
    assert latest[refused]["status"] == "connection_error" and latest[refused]["retryable"]
    assert latest["ftp://127.0.0.1/x.png"]["status"] == "connection_error"
    assert not latest["ftp://127.0.0.1/x.png"]["retryable"]
    assert latest[server.url("/slow.png")]["retryable"] and latest[server.url("/error500")]["retryable"]
    assert not latest[server.url("/missing.png")]["retryable"]
    assert latest[server.url("/redirect")]["final_url"] == server.url("/target.png")
    assert latest[server.url("/page.html")]["error"] == "body is HTML"
    assert latest[server.url("/big.png")]["n_bytes"] == len(BIG_PNG)  # from Content-Length
    assert MAX_BYTES < latest[server.url("/big-stream.png")]["n_bytes"] < len(BIG_PNG)  # stopped early
    assert server.hits("/missing.png") == 1 and server.hits("/error500") == 2
    assert summary.counts["ok"] == 5

    # Every image that arrived is stored under its sha256 and ingested as a training image.
    images = {r["image_id"]: r for r in workspace.sql("SELECT * FROM images").to_pylist()}
    ok_rows = [r for r in latest.values() if r["status"] == "ok"]
    assert len(images) == 4  # /mislabeled serves the bytes of /good.jpg: one image, stored once
    for row in ok_rows:
        image = images[row["sha256"]]
        same_bytes = {r["url"] for r in ok_rows if r["sha256"] == row["sha256"]}
        assert image["role"] == "train" and image["status"] == "ok" and image["source_uri"] in same_bytes
        stored = (workspace.root / image["store_path"]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == row["sha256"]
        assert (image["width"], image["height"]) == (row["width"], row["height"])
    target = images[hashlib.sha256(REDIRECT_TARGET).hexdigest()]
    assert (target["width"], target["height"], target["format"], target["mode"]) == (32, 32, "PNG", "RGB")
    assert images[hashlib.sha256(GOOD_JPG).hexdigest()]["store_path"].endswith(".jpg")
    assert workspace.count("train_links") == 0  # a bare URL list links nothing


def test_prompts_are_linked_and_a_rerun_fetches_only_what_is_not_final(
    workspace: Workspace, server: LocalServer
) -> None:
    prompts = [
        ("p-good", "/good.png"),
        ("p-same-url", "/good.png"),  # two prompts, one URL: fetched once, linked twice
        ("p-jpg", "/good.jpg"),
        ("p-404", "/missing.png"),
        ("p-slow", "/slow.png"),
        ("p-html", "/page.html"),
    ]
    workspace.write(
        "prompts",
        [
            {"prompt_id": pid, "prompt_set": "mem", "text": pid, "source_key": pid, "url": server.url(path)}
            for pid, path in prompts
        ]
        + [{"prompt_id": "other", "prompt_set": "other", "text": "x", "source_key": "0", "url": server.url("/good.jpg")}],
    )
    first = fetch(workspace, prompt_set="mem", **FAST)
    assert (first.n_targets, first.n_skipped, first.n_urls) == (6, 0, 5)
    assert server.hits("/good.png") == 1
    links = workspace.sql("SELECT prompt_id, image_id, relation FROM train_links ORDER BY prompt_id").to_pylist()
    png_id, jpg_id = hashlib.sha256(GOOD_PNG).hexdigest(), hashlib.sha256(GOOD_JPG).hexdigest()
    assert links == [
        {"prompt_id": "p-good", "image_id": png_id, "relation": "url"},
        {"prompt_id": "p-jpg", "image_id": jpg_id, "relation": "url"},
        {"prompt_id": "p-same-url", "image_id": png_id, "relation": "url"},
    ]

    # Re-run: only the timeout (retryable) is tried again; ok and permanent failures are final.
    second = fetch(workspace, prompt_set="mem", **FAST)
    assert (second.n_skipped, second.n_urls) == (5, 1)
    assert server.hits("/good.png") == 1 and server.hits("/missing.png") == 1 and server.hits("/slow.png") == 4
    # --retry-failed also retries the permanent failures, never the ok ones.
    third = fetch(workspace, prompt_set="mem", retry_failed=True, **FAST)
    assert (third.n_skipped, third.n_urls) == (3, 3)
    assert server.hits("/missing.png") == 2 and server.hits("/page.html") == 2 and server.hits("/good.png") == 1

    history = workspace.sql(
        "SELECT prompt_id, count(*) AS n FROM fetches GROUP BY prompt_id ORDER BY prompt_id"
    ).to_pylist()
    assert history == [
        {"prompt_id": "p-404", "n": 2},
        {"prompt_id": "p-good", "n": 1},
        {"prompt_id": "p-html", "n": 2},
        {"prompt_id": "p-jpg", "n": 1},
        {"prompt_id": "p-same-url", "n": 1},
        {"prompt_id": "p-slow", "n": 3},
    ]
    assert workspace.count("images") == 2 and workspace.count("train_links") == 3
    assert workspace.sql("SELECT count(*) AS n FROM runs WHERE command = 'fetch' AND status = 'ok'").column("n")[0].as_py() == 3


def test_parquet_captions_become_linked_prompts(workspace: Workspace, server: LocalServer, tmp_path: Path) -> None:
    import pyarrow as pa

    path = tmp_path / "laion_subset.parquet"
    pq.write_table(
        pa.table(
            {
                "url": [server.url("/good.png"), server.url("/good.jpg"), None, server.url("/missing.png")],
                "caption": ["a red square", "a green square", "no url", None],
                "similarity": [0.3, 0.4, 0.5, 0.6],
            }
        ),
        path,
    )
    summary = fetch(workspace, parquet=path, **FAST)
    assert summary.n_targets == 3 and summary.counts == {"ok": 2, "http_error": 1}
    prompts = workspace.sql("SELECT prompt_set, text, url, extra FROM prompts ORDER BY text").to_pylist()
    assert [(p["prompt_set"], p["text"]) for p in prompts] == [("laion_subset", "a green square"), ("laion_subset", "a red square")]
    assert '"similarity": 0.3' in prompts[1]["extra"]
    linked = workspace.sql(
        "SELECT p.text FROM train_links l JOIN prompts p USING (prompt_id) JOIN images i USING (image_id) ORDER BY 1"
    ).column("text").to_pylist()
    assert linked == ["a green square", "a red square"]
    assert _latest(workspace)[server.url("/missing.png")]["prompt_id"] is None  # no caption: unlinked


def test_bad_sources_are_clear_errors(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no prompt with a url"):
        fetch(workspace)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(InputError, match="holds no URL"):
        fetch(workspace, urls_file=empty)
    with pytest.raises(InputError, match="not both"):
        fetch(workspace, urls_file=empty, parquet=empty)
    import pyarrow as pa

    no_url = tmp_path / "no_url.parquet"
    pq.write_table(pa.table({"caption": ["x"]}), no_url)
    with pytest.raises(InputError, match="no url column"):
        fetch(workspace, parquet=no_url)


def test_image_check_reads_bytes_not_names() -> None:
    assert check_image_bytes(GOOD_PNG).status == "ok"
    assert check_image_bytes(b"").status == "not_image"
    assert check_image_bytes(b"GIF89a" + b"\x00" * 10).status == "decode_error"
    huge = check_image_bytes(_image_bytes("PNG", (0, 0, 0), (300, 300)), max_pixels=10_000)
    assert (huge.status, huge.width) == ("too_large", 300)


def test_cli_fetch_prints_counts_and_reruns(tmp_path: Path, server: LocalServer) -> None:
    ws = Workspace.init(tmp_path / "ws")
    url_file = tmp_path / "urls.txt"
    url_file.write_text(f"{server.url('/good.png')}\n{server.url('/missing.png')}\n")
    args = ["-m", "fbmem_data", "fetch", "-w", str(ws.root), "--urls", str(url_file), "--max-bytes", "1MiB", "--allow-private", "-f", "csv"]
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ['"status","rows"', '"http_error",1', '"ok",1']
    again = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "2 already fetched" in again.stderr
    assert server.hits("/good.png") == 1
    bad = subprocess.run([sys.executable, *args[:-2], "--max-bytes", "lots"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "not a size" in bad.stderr


def test_rerun_after_kill_fetches_only_what_is_missing(tmp_path: Path, server: LocalServer) -> None:
    ws = Workspace.init(tmp_path / "ws")
    before = [f"/n/{i}.png" for i in range(6)]
    after = [f"/n/{i}.png" for i in range(6, 10)]
    for i, path in enumerate(before + after):
        server.state.numbered[path] = _image_bytes("PNG", (i * 20, 255 - i * 20, 7))
    paths = [*before, "/hold.png", *after]
    url_file = tmp_path / "urls.txt"
    url_file.write_text("\n".join(server.url(p) for p in paths) + "\n")
    cmd = [sys.executable, "-m", "fbmem_data", "fetch", "-w", str(ws.root), "--urls", str(url_file),
           "--concurrency", "2", "--batch-size", "3", "--timeout", "30", "--retries", "0", "--allow-private"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        # Wait until /hold.png holds a worker and every other URL has been answered.
        while time.monotonic() < deadline and not (
            server.hits("/hold.png") and all(server.hits(p) for p in before + after)
        ):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        time.sleep(0.5)  # let the main loop write the batches it can
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    recorded = set(ws.sql("SELECT url FROM fetches").column("url").to_pylist())
    assert 6 <= len(recorded) < len(paths)  # whole batches survived; the held URL did not
    assert server.url("/hold.png") not in recorded
    assert ws.sql("SELECT status FROM runs").column("status").to_pylist() == ["running"]

    server.state.release_hold.set()
    hits_before = {p: server.hits(p) for p in paths}
    summary = fetch(ws, urls_file=url_file, concurrency=2, timeout=5, retries=0, allow_private=True)
    refetched = {p for p in paths if server.hits(p) > hits_before[p]}
    assert refetched == {p for p in paths if server.url(p) not in recorded}
    assert summary.n_skipped == len(recorded) and summary.counts == {"ok": len(paths) - len(recorded)}

    per_url = ws.sql("SELECT url, count(*) AS n, min(status) AS s FROM fetches GROUP BY url").to_pylist()
    assert len(per_url) == len(paths) and all(r["n"] == 1 and r["s"] == "ok" for r in per_url)
    assert ws.count("images") == len(paths)
    assert ws.sql("SELECT count(DISTINCT image_id) AS n FROM images").column("n")[0].as_py() == len(paths)
