"""Mitigations: plug-ins that change how a batch of images is generated (see protocol.py).

Built in: `none`, `rta` (random token addition), `wen` (Wen et al. prompt-embedding optimisation);
`nemo`, `nemo-c` (nemo.py) and `nemo-c-transfer`. Each is an entry point of group `fbmem.mitigations`
(fbmem_data/plugins.py): an installed package adds one without editing this file.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from fbmem_data import plugins
from fbmem_data.errors import PluginError
from fbmem_data.mitigate.protocol import MITIGATION_FAMILY, GenerationBatch, GenerationSettings, Mitigation

__all__ = [
    "GenerationBatch",
    "GenerationSettings",
    "Mitigation",
    "create_mitigation",
    "load_mitigation_plugins",
    "mitigation_class",
    "mitigation_names",
    "split_mitigation_params",
]


def load_mitigation_plugins() -> None:
    """Kept for callers of the old API: mitigations are found through entry points, nothing to do."""


def mitigation_names() -> list[str]:
    """Every installed mitigation's name (reads entry points; imports no plug-in)."""
    return plugins.names(MITIGATION_FAMILY)


def create_mitigation(name: str, **params: Any) -> Mitigation:
    """Build mitigation `name` with its keyword parameters.

    Raises:
        PluginError: unknown name, or a parameter the mitigation does not take.
    """
    try:
        return plugins.create(MITIGATION_FAMILY, name, **params)
    except TypeError as exc:
        raise PluginError(f"mitigation {name!r} rejected its parameters {params}: {exc}") from exc


def mitigation_class(name: str) -> type[Mitigation]:
    """The registered class (factory) of mitigation `name`: its flags, contract_params, contract_setup.

    Raises:
        PluginError: no mitigation of that name is registered.
    """
    return plugins.load(MITIGATION_FAMILY, name)  # type: ignore[return-value]


def accepted_params(name: str) -> set[str] | None:
    """Parameter names the mitigation's constructor takes (None: it takes any keyword)."""
    init = _constructor(mitigation_class(name))
    if init is object.__init__:
        return set()
    params = list(inspect.signature(init).parameters.values())[1:]  # without self
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def _constructor(cls: type) -> Any:
    """The __init__ a class really runs. A class with no __init__ of its own under a typing.Protocol
    shows the protocol's placeholder (*args, **kwargs) until its first instance replaces it with
    object.__init__, so asking the class itself gives a different answer before and after."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and getattr(init, "__name__", "") != "_no_init_or_replace_init":
            return init
    return object.__init__


def split_mitigation_params(names: list[str], pairs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Route `--mitigation-param` pairs to mitigations.

    `name.key=value` goes to that mitigation only; `key=value` goes to every selected mitigation that
    takes `key` (and must be taken by at least one).

    Raises:
        PluginError: a scoped pair names an unselected mitigation, or no mitigation takes a key.
    """
    routed: dict[str, dict[str, Any]] = {n: {} for n in names}
    for raw_key, value in pairs.items():
        scope, _, key = raw_key.rpartition(".")
        if scope:
            if scope not in routed:
                raise PluginError(f"--mitigation-param {raw_key}: mitigation {scope!r} is not selected")
            routed[scope][key] = value
            continue
        takers = [n for n in names if (acc := accepted_params(n)) is None or key in acc]
        if not takers:
            raise PluginError(f"--mitigation-param {key}: none of {names} takes a parameter {key!r}")
        for n in takers:
            routed[n][key] = value
    return routed
