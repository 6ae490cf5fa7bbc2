"""The per-URL outcomes of `fbmem fetch` and which of them are worth trying again."""

from __future__ import annotations

OK = "ok"
HTTP_ERROR = "http_error"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
NOT_IMAGE = "not_image"
TOO_LARGE = "too_large"
DECODE_ERROR = "decode_error"
BLOCKED = "blocked"  # the destination address is loopback/private/link-local/...: never contacted
# Internal only: a request stopped by Ctrl-C/SIGTERM. Never recorded; the URL is fetched next run.
CANCELLED = "cancelled"

ALL_STATUSES = (OK, HTTP_ERROR, TIMEOUT, CONNECTION_ERROR, NOT_IMAGE, TOO_LARGE, DECODE_ERROR, BLOCKED)

# 429 is a 4xx, but it means "later", not "never"; 408 likewise. Every other 4xx is permanent.
RETRYABLE_HTTP_CODES = frozenset({408, 429})


def is_retryable_http(code: int) -> bool:
    """True for HTTP answers that may succeed if asked again (5xx, 408, 429)."""
    return code >= 500 or code in RETRYABLE_HTTP_CODES
