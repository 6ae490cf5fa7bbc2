"""Shared fixtures. Tests never reach a model hub: HF_HUB_OFFLINE is forced on here too."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest

from fbmem_data.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_reference_dir() -> Path | None:
    for candidate in (REPO_ROOT / "data" / "reference", REPO_ROOT.parent / "shared" / "data" / "reference"):
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace.init(tmp_path / "ws")
    yield ws
    ws.close()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    found = _find_reference_dir()
    if found is None:
        pytest.skip("reference data (../shared/data/reference) is not present beside this checkout")
    return found
