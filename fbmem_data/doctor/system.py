"""What this machine can run: Python, torch, CUDA devices and memory, package versions.

torch and onnxruntime are imported inside the functions, never at module import.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from typing import Any

from fbmem_data import __version__

# Used when fbmem is run from a checkout that is not pip-installed (no metadata to read).
_FALLBACK_DEPENDENCIES = (
    "duckdb", "polars", "pyarrow", "typer", "numpy", "pillow", "torch", "torchvision", "diffusers",
    "transformers", "safetensors", "scikit-learn", "usearch", "httpx", "segment-anything", "open-clip-torch",
    "onnxruntime", "timm",
)
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def dependency_names() -> list[str]:
    """fbmem's declared dependencies, optional extras included, in declaration order."""
    try:
        requires = metadata.requires("fbmem") or []
    except metadata.PackageNotFoundError:
        return list(_FALLBACK_DEPENDENCIES)
    names: list[str] = []
    for req in requires:
        match = _REQ_NAME.match(req)
        if match and match.group(1) not in names:
            names.append(match.group(1))
    return names


def package_versions(names: list[str] | None = None) -> dict[str, str | None]:
    """Installed version of each package (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names if names is not None else dependency_names():
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def torch_info() -> dict[str, Any]:
    """torch version, CUDA availability, every visible device with its total and free memory."""
    try:
        import torch
    except ImportError as exc:
        return {"installed": False, "error": str(exc)}
    info: dict[str, Any] = {
        "installed": True,
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": bool(torch.cuda.is_available()),
        "devices": [],
        "threads": torch.get_num_threads(),
    }
    mps = getattr(torch.backends, "mps", None)
    info["mps_available"] = bool(mps and mps.is_available())
    if info["cuda_available"]:
        info["cudnn"] = torch.backends.cudnn.version()
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            device: dict[str, Any] = {
                "index": index,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "total_gib": round(props.total_memory / 2**30, 2),
            }
            try:
                free, _ = torch.cuda.mem_get_info(index)
                device["free_gib"] = round(free / 2**30, 2)
            except RuntimeError as exc:  # a busy or MIG-partitioned device may refuse
                device["free_gib"] = None
                device["error"] = str(exc)
            info["devices"].append(device)
    return info


def onnxruntime_providers() -> list[str] | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return list(onnxruntime.get_available_providers())


def system_info() -> dict[str, Any]:
    """Everything `fbmem doctor` reports about the machine (no model files)."""
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "fbmem": __version__,
        "torch": torch_info(),
        "onnxruntime_providers": onnxruntime_providers(),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"),
    }
