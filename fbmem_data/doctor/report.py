"""Put the machine and the model checks together: `diagnose(...)` -> DoctorReport."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fbmem_data.doctor.checks import FAILING, ModelCheck, check_model
from fbmem_data.doctor.registry import all_models, get_model


@dataclass
class DoctorReport:
    """The machine, every checked model, and which of them the caller asked for."""

    system: dict[str, Any]
    packages: dict[str, str | None]
    models: list[ModelCheck]
    requested: list[str] = field(default_factory=list)

    @property
    def failing(self) -> list[ModelCheck]:
        """Requested models that are missing, incomplete or corrupt; with no request, any corrupt one."""
        if self.requested:
            return [m for m in self.models if m.name in self.requested and m.status in FAILING]
        return [m for m in self.models if m.status == "corrupt"]

    @property
    def ok(self) -> bool:
        return not self.failing

    def commands(self) -> list[dict[str, Any]]:
        """Per command: the models it needs and whether all of them are usable here."""
        needs: dict[str, list[str]] = {}
        for m in self.models:
            for command in m.commands:
                needs.setdefault(command, []).append(m.name)
        status = {m.name: m.status for m in self.models}
        return [
            {"command": c, "needs": names, "ready": all(status[n] in ("ok", "unverified") for n in names)}
            for c, names in needs.items()
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "system": self.system,
            "packages": self.packages,
            "models": [m.to_dict() for m in self.models],
            "commands": self.commands(),
            "requested": self.requested,
        }


def diagnose(
    models: list[str] | None = None,
    paths: dict[str, str] | None = None,
    hash_files: bool = True,
    include_system: bool = True,
) -> DoctorReport:
    """Check the machine and the models.

    Args:
        models: names to check (default: every known model); these are the "requested" ones.
        paths: explicit locations by model name (file, directory or hub id), overriding env vars.
        hash_files: compute sha256 of the weight files (False: presence and sizes only).
        include_system: also probe Python/torch/CUDA/packages (imports torch).

    Returns:
        DoctorReport; `report.ok` is False when a requested model is missing, incomplete or corrupt.

    Raises:
        PluginError: an unknown model name.
    """
    from fbmem_data.doctor.system import package_versions, system_info

    paths = dict(paths or {})
    requested = list(dict.fromkeys([*(models or []), *paths]))
    specs = [get_model(n) for n in requested] if requested else list(all_models().values())
    checks = [check_model(spec, paths.get(spec.name), hash_files=hash_files) for spec in specs]
    return DoctorReport(
        system=system_info() if include_system else {},
        packages=package_versions() if include_system else {},
        models=checks,
        requested=requested,
    )
