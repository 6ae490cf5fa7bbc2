"""One id scheme for every table.

- image_id: sha256 hex of the image file's bytes (content hash). Rows for files that could not be
  read at all (missing) use sha256 of b"fbmem-missing:" + the source URI, so they still have a key.
- prompt_id: first 16 hex chars of sha256(prompt_set, source_key, text): stable across re-ingests,
  distinct for repeated captions on distinct rows.
- params_hash: first 16 hex chars of sha256 of canonical JSON of a configuration dict.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

_SEP = "\x1f"  # unit separator: cannot appear in normal text fields


def image_id_from_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def missing_image_id(source_uri: str) -> str:
    return hashlib.sha256(b"fbmem-missing:" + source_uri.encode("utf-8")).hexdigest()


def prompt_id(prompt_set: str, source_key: str, text: str) -> str:
    payload = _SEP.join([prompt_set, source_key, text]).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:16]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()[:16]


def new_run_id() -> str:
    # Time-sortable: milliseconds since epoch, then randomness.
    return f"{int(time.time() * 1000):013x}-{uuid.uuid4().hex[:12]}"
