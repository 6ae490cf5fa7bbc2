"""`fbmem fetch` against hostile loopback servers: dripped headers, endless bodies, redirects into a
private network, and interrupts (cases 1 and 2 of docs/reliability.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fbmem_data.fetch import fetch
from fbmem_data.workspace import Workspace

from .conftest import RawServer, wait_for

CLI = [sys.executable, "-m", "fbmem_data"]


def _latest(ws: Workspace) -> dict[str, dict]:
    return {r["url"]: r for r in ws.sql("SELECT * FROM fetch_latest").to_pylist()}


def _url_file(tmp_path: Path, urls: list[str]) -> Path:
    path = tmp_path / "urls.txt"
    path.write_text("\n".join(urls) + "\n")
    return path


def test_dripped_headers_hit_the_overall_deadline(tmp_path: Path, hostile_server: RawServer) -> None:
    """Case 1: a server dripping its headers one byte at a time used to hold a request forever."""
    ws = Workspace.init(tmp_path / "ws")
    urls = _url_file(tmp_path, [hostile_server.url("/drip-headers"), hostile_server.url("/endless-body")])
    cmd = [
        *CLI,
        "fetch",
        "-w",
        str(ws.root),
        "--urls",
        str(urls),
        "--timeout",
        "1",
        "--retries",
        "0",
        "--allow-private",
    ]
    started = time.monotonic()
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    # The deadline is 4 x --timeout = 4 s; generous margin for a loaded machine, far below "forever".
    assert elapsed < 20, elapsed
    latest = _latest(ws)
    drip = latest[hostile_server.url("/drip-headers")]
    assert drip["status"] == "timeout" and drip["retryable"]
    assert "within 4 s" in drip["error"]
    assert drip["elapsed_s"] < 10
    assert latest[hostile_server.url("/endless-body")]["status"] == "timeout"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_promptly_keeps_finished_urls_and_resumes(
    tmp_path: Path, hostile_server: RawServer, sig: signal.Signals
) -> None:
    """Case 1: Ctrl-C (even twice) did not stop a run stuck on a dripping server."""
    ws = Workspace.init(tmp_path / "ws")
    good = [f"/n/{i}.png" for i in range(4)]
    urls = _url_file(tmp_path, [hostile_server.url(p) for p in good] + [hostile_server.url("/drip-headers")])
    cmd = [
        *CLI,
        "fetch",
        "-w",
        str(ws.root),
        "--urls",
        str(urls),
        "--timeout",
        "60",
        "--retries",
        "0",
        "--batch-size",
        "1",
        "--concurrency",
        "2",
        "--allow-private",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(
            lambda: hostile_server.count("/drip-headers") == 1 and all(hostile_server.count(p) for p in good)
        )
        # Finished URLs are written one batch at a time: wait until they are recorded.
        assert wait_for(lambda: ws.count("fetches") == len(good))
        sent = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=30)
        stopped_in = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert stopped_in < 10, stopped_in  # the dripping request alone would have run for 240 s
    assert proc.returncode == 1, stderr
    assert "Error: fetch interrupted" in stderr and "Traceback" not in stderr
    latest = _latest(ws)
    assert set(latest) == {hostile_server.url(p) for p in good}  # kept; the dripping URL is not recorded
    assert ws.sql("SELECT status FROM runs").column("status").to_pylist() == ["interrupted"]

    summary = fetch(ws, urls_file=urls, timeout=0.3, retries=0, allow_private=True)
    assert summary.n_skipped == len(good) and summary.counts == {"timeout": 1}


def test_private_destinations_are_blocked_on_every_hop(
    workspace: Workspace, tmp_path: Path, hostile_server: RawServer, secret_server: RawServer
) -> None:
    """Case 2: a redirect to 127.0.0.2 was followed and its bytes stored as ok."""
    to_private = hostile_server.url("/to-private")
    good = hostile_server.url("/good.png")
    by_name = good.replace("127.0.0.1", "localhost")  # a name: checked after DNS resolution
    urls = _url_file(
        tmp_path, [to_private, good, by_name, "http://[::ffff:127.0.0.1]:9/x.png", "http://0.0.0.0:9/x.png"]
    )

    # Default: nothing non-public is contacted at all.
    fetch(workspace, urls_file=urls, timeout=2, retries=0)
    latest = _latest(workspace)
    assert {r["status"] for r in latest.values()} == {"blocked"}, latest
    assert all(not r["retryable"] for r in latest.values())
    assert "loopback" in latest[good]["error"] and "loopback" in latest[by_name]["error"]
    assert "unspecified" in latest["http://0.0.0.0:9/x.png"]["error"]
    assert hostile_server.hits == [] and secret_server.hits == []
    assert workspace.count("images") == 0

    # Allowing only 127.0.0.1: the first hop is fetched, the redirect into 127.0.0.2 is refused.
    fetch(workspace, urls_file=urls, timeout=2, retries=0, retry_failed=True, allow_networks=["127.0.0.1/32"])
    latest = _latest(workspace)
    assert latest[good]["status"] == "ok"
    assert latest[to_private]["status"] == "blocked" and "127.0.0.2" in latest[to_private]["error"]
    assert hostile_server.count("/to-private") == 1 and secret_server.hits == []
    assert workspace.count("images") == 1

    # --allow-private opts in to every hop.
    fetch(workspace, urls_file=urls, timeout=2, retries=0, retry_failed=True, allow_private=True)
    assert _latest(workspace)[to_private]["status"] == "ok" and secret_server.count("/secret.png") == 1


def test_cli_blocked_by_default_and_bad_network_is_an_error(
    tmp_path: Path, hostile_server: RawServer
) -> None:
    ws = Workspace.init(tmp_path / "ws")
    urls = _url_file(tmp_path, [hostile_server.url("/good.png")])
    out = subprocess.run(
        [*CLI, "fetch", "-w", str(ws.root), "--urls", str(urls), "-f", "csv"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ['"status","rows"', '"blocked",1']
    bad = subprocess.run(
        [*CLI, "fetch", "-w", str(ws.root), "--urls", str(urls), "--allow-net", "lab"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        bad.returncode == 1
        and bad.stderr.startswith("Error: not a network")
        and "Traceback" not in bad.stderr
    )


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.2", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "not globally routable"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_policy(address: str, reason: str | None) -> None:
    import ipaddress

    from fbmem_data.fetch.guard import Guard, blocked_reason

    ip = ipaddress.ip_address(address)
    assert blocked_reason(ip) == reason
    guard = Guard(allow_networks=["10.1.0.0/16"])
    try:
        assert (guard.check(ip) is None) == (reason is None or address == "10.1.2.3")
        assert Guard.check(guard, ipaddress.ip_address("10.2.0.1")) == "private"
    finally:
        guard.close()
