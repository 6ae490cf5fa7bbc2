"""`PairingSummary`: what one pairing call did (a leaf module: the package and its methods share it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PairingSummary:
    """What one pairing call did."""

    pairing_id: str
    method: str
    embedder: str | None
    params_hash: str | None
    k: int | None
    n_generated: int
    n_train: int
    n_paired_now: int
    rows_written: int
    seconds: float
    n_generated_without_vector: int = 0
    search: str | None = None  # ann: the search that ran, "exact" or "hnsw"

    def as_row(self) -> dict[str, Any]:
        return dict(self.__dict__)
