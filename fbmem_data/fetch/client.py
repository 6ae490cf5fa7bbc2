"""One URL -> its bytes or a failure status: httpx with timeouts, retries, back-off and a size cap.

Why httpx: it is already a dependency, well kept, thread-safe with one pooled `Client` whose `Limits`
bound the open connections, has separate connect/read/write/pool timeouts, streams bodies (so the
size cap aborts a download instead of buffering it), follows redirects with a cap, and lets us turn
off environment proxies (`trust_env=False`). img2dataset would add a large dependency tree and its own
shard format for what is, for 500 prompts, one pooled client and a thread pool.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fbmem_data.fetch.guard import BlockedDestination, Guard, GuardedBackend, RequestCancelled, set_deadline
from fbmem_data.fetch.statuses import (
    BLOCKED,
    CANCELLED,
    CONNECTION_ERROR,
    HTTP_ERROR,
    OK,
    TIMEOUT,
    TOO_LARGE,
    is_retryable_http,
)

if TYPE_CHECKING:
    import httpx

USER_AGENT = "fbmem-fetch/0.1 (+https://github.com/fbmem; research use)"
MAX_REDIRECTS = 5
MAX_BACKOFF_S = 30.0


@dataclass
class Download:
    """What one URL gave: status ok with the body, or the failure and whether to try again later."""

    url: str
    status: str
    retryable: bool = False
    body: bytes | None = None
    http_status: int | None = None
    content_type: str | None = None
    final_url: str | None = None
    n_bytes: int | None = None
    error: str | None = None
    attempts: int = 0
    elapsed_s: float = 0.0
    retry_after: str | None = None  # the server's Retry-After, used for the back-off only

    sha256: str | None = None


@dataclass(frozen=True)
class FetchSettings:
    """Knobs of the HTTP side. `timeout` bounds connect and each read; a whole request (connect,
    headers, body, redirects) must finish within `total_timeout_factor * timeout`.
    `allow_private` lets requests reach loopback/private/link-local/... addresses;
    `allow_networks` allows only the listed networks (CIDR) among those."""

    concurrency: int = 16
    timeout: float = 10.0
    retries: int = 3
    max_bytes: int = 20 * 1024 * 1024
    backoff_s: float = 0.5
    total_timeout_factor: float = 4.0
    user_agent: str = USER_AGENT
    allow_private: bool = False
    allow_networks: tuple[str, ...] = ()

    @property
    def total_timeout(self) -> float:
        return self.total_timeout_factor * self.timeout


def make_client(settings: FetchSettings, guard: Guard) -> httpx.Client:
    """A pooled client shared by all worker threads; proxies from the environment are ignored.
    Every connection goes through `guard` (address checks, overall deadline, cancellation)."""
    import httpcore
    import httpx

    limits = httpx.Limits(
        max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
    )
    transport = httpx.HTTPTransport(limits=limits, trust_env=False)
    # httpx takes no network backend: swap in a pool that connects through the guard, keeping
    # httpx's TLS context (certifi roots, verification on).
    transport._pool = httpcore.ConnectionPool(  # type: ignore[attr-defined]
        ssl_context=transport._pool._ssl_context,  # type: ignore[attr-defined]
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedBackend(guard),
    )
    return httpx.Client(
        transport=transport,
        timeout=httpx.Timeout(settings.timeout),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        trust_env=False,  # no proxy or netrc surprises; the tests must stay on 127.0.0.1
        headers={"User-Agent": settings.user_agent, "Accept": "image/*,*/*;q=0.5"},
    )


def _attempt(client: httpx.Client, url: str, settings: FetchSettings) -> Download:
    """One GET, streamed, with the size cap; never raises for network trouble."""
    import httpx

    total_s = settings.total_timeout
    deadline = time.monotonic() + total_s
    set_deadline(deadline)  # read by the guard on every socket operation of this request
    try:
        with client.stream("GET", url) as response:
            code = response.status_code
            result = Download(
                url,
                status=OK,
                http_status=code,
                content_type=response.headers.get("content-type"),
                final_url=str(response.url),
            )
            if code >= 300:
                result.status, result.retryable = HTTP_ERROR, is_retryable_http(code)
                result.error = f"HTTP {code} {response.reason_phrase}".strip()
                result.retry_after = response.headers.get("retry-after")
                return result
            announced = response.headers.get("content-length")
            if announced and announced.isdigit() and int(announced) > settings.max_bytes:
                result.status, result.n_bytes = TOO_LARGE, int(announced)
                result.error = f"Content-Length {announced} exceeds max_bytes {settings.max_bytes}"
                return result
            chunks: list[bytes] = []
            received = 0
            for chunk in response.iter_bytes():
                received += len(chunk)
                if received > settings.max_bytes:
                    # Servers lie or omit Content-Length: stop reading as soon as the cap is passed.
                    result.status, result.n_bytes = TOO_LARGE, received
                    result.error = f"body passed max_bytes {settings.max_bytes} while streaming"
                    return result
                if time.monotonic() > deadline:
                    result.status, result.retryable, result.n_bytes = TIMEOUT, True, received
                    result.error = f"body not complete within {total_s:g} s"
                    return result
                chunks.append(chunk)
            result.body = b"".join(chunks)
            result.n_bytes = len(result.body)
            result.sha256 = hashlib.sha256(result.body).hexdigest()
            return result
    except httpx.TimeoutException as exc:
        if time.monotonic() >= deadline:
            error = f"no complete answer within {total_s:g} s (connect, headers and body)"
        else:
            error = f"{type(exc).__name__}: {exc}"
        return Download(url, TIMEOUT, retryable=True, error=error)
    except BlockedDestination as exc:
        return Download(url, BLOCKED, retryable=False, error=f"blocked: {exc}")
    except RequestCancelled as exc:
        return Download(url, CANCELLED, retryable=True, error=str(exc))
    except httpx.TooManyRedirects as exc:
        return Download(url, HTTP_ERROR, retryable=False, error=f"too many redirects: {exc}")
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        return Download(url, CONNECTION_ERROR, retryable=False, error=f"bad URL: {exc}")
    except httpx.HTTPError as exc:
        # ConnectError, ReadError, RemoteProtocolError (a truncated chunked body), ...: try again later.
        return Download(url, CONNECTION_ERROR, retryable=True, error=f"{type(exc).__name__}: {exc}")
    except ValueError as exc:  # httpx raises plain ValueError for some malformed URLs
        return Download(url, CONNECTION_ERROR, retryable=False, error=f"bad URL: {exc}")
    finally:
        set_deadline(None)


def backoff_delay(attempt: int, settings: FetchSettings, retry_after: str | None = None) -> float:
    """Exponential back-off with jitter: base * 2**(attempt-1) * U(0.5, 1.5), capped; honours a
    numeric Retry-After up to the cap."""
    delay = settings.backoff_s * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
    if retry_after and retry_after.strip().isdigit():
        delay = max(delay, float(retry_after))
    return min(delay, MAX_BACKOFF_S)


def download(
    client: httpx.Client, url: str, settings: FetchSettings, cancelled: threading.Event | None = None
) -> Download:
    """GET `url` with up to `settings.retries` retries on timeouts, connection errors, 5xx, 408, 429.

    Args:
        client: from make_client (shared between threads).
        url: the URL to fetch.
        settings: timeouts, retries, size cap.
        cancelled: set when the run is interrupted: no further attempt or back-off.

    Returns:
        A Download: status ok with `body`, or the last failure; `attempts` counts the requests.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        result = _attempt(client, url, settings)
        result.attempts = attempt
        stop = cancelled is not None and cancelled.is_set()
        if result.status == OK or not result.retryable or attempt > settings.retries or stop:
            result.elapsed_s = time.monotonic() - started
            return result
        delay = backoff_delay(attempt, settings, result.retry_after)
        if cancelled is not None:
            cancelled.wait(delay)
        else:
            time.sleep(delay)
