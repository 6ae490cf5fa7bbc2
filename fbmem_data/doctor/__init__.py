"""`fbmem doctor`: what this machine can run and which model files are present and intact.

Library entry point: `diagnose(models=..., paths=..., hash_files=...)` returns a DoctorReport;
the registry of models lives in registry.py, the checks in checks.py, the machine in system.py.
"""

from __future__ import annotations

from fbmem_data.doctor.checks import FAILING, FileCheck, ModelCheck, check_model
from fbmem_data.doctor.registry import (
    KnownFile,
    ModelSpec,
    all_models,
    get_model,
    register_model,
    unregister_model,
)
from fbmem_data.doctor.report import DoctorReport, diagnose

__all__ = [
    "FAILING",
    "DoctorReport",
    "FileCheck",
    "KnownFile",
    "ModelCheck",
    "ModelSpec",
    "all_models",
    "check_model",
    "diagnose",
    "get_model",
    "register_model",
    "unregister_model",
]
