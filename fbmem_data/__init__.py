"""fbmem: foreground/background memorization analysis for text-to-image diffusion models.

The public API is importable from here without pulling in torch: heavy modules are loaded
only when a function that needs them runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["FbmemError", "Workspace", "__version__"]

if TYPE_CHECKING:
    from fbmem_data.errors import FbmemError
    from fbmem_data.workspace import Workspace


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import fbmem_data` cheap.
    if name == "Workspace":
        from fbmem_data.workspace import Workspace

        return Workspace
    if name == "FbmemError":
        from fbmem_data.errors import FbmemError

        return FbmemError
    raise AttributeError(f"module 'fbmem_data' has no attribute {name!r}")
