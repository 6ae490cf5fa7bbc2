"""Locate the files that ship with fbmem: sql/, schemas/ and data/.

In a wheel they sit inside the package (fbmem_data/sql, fbmem_data/schemas); in a source checkout
(editable install) they sit at the repository's top level.
"""

from __future__ import annotations

from pathlib import Path

from fbmem_data.errors import FbmemError

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FbmemError(
        f"fbmem's '{name}' directory was not found next to the package ({_PACKAGE_DIR})",
        hint="reinstall fbmem (pip install -e . from the checkout, or the wheel)",
    )


def sql_dir() -> Path:
    return resource_dir("sql")


def schemas_dir() -> Path:
    return resource_dir("schemas")


def data_dir() -> Path:
    return resource_dir("data")
