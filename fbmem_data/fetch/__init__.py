"""`fbmem fetch`: download the training images behind prompt URLs into a workspace.

Library entry point: `fetch(ws, ...)`; per-URL outcomes land in the `fetches` table, images in
`images` (role train) and `train_links` (relation url).
"""

from __future__ import annotations

from fbmem_data.fetch.fetcher import DEFAULT_MAX_BYTES, FetchSummary, fetch, finished_targets, resolve_targets
from fbmem_data.fetch.sources import FetchTarget
from fbmem_data.fetch.statuses import ALL_STATUSES

__all__ = [
    "ALL_STATUSES",
    "DEFAULT_MAX_BYTES",
    "FetchSummary",
    "FetchTarget",
    "fetch",
    "finished_targets",
    "resolve_targets",
]
