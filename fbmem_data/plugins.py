"""The plug-in registry: one way to find segmenters, embedders, metrics, mitigations, utilities,
distributors, model sources, the weights `fbmem doctor` checks and the test beds of `fbmem eval`.

A plug-in is an entry point in one of the FAMILIES groups whose object is a factory (a function or a
class) called with keyword options. fbmem's own plug-ins are declared the same way, in pyproject.toml
(`[project.entry-points."fbmem.segmenters"]` ...), so a third-party package adds one without editing
fbmem:

    [project.entry-points."fbmem.segmenters"]
    my-segmenter = "my_package.seg:make_segmenter"

Discovery reads entry-point metadata only; a plug-in's module is imported when it is first built
(`create`) or loaded (`load`), so listing plug-ins never imports torch. Two providers of one name in a
family is an error naming both. `register` adds an in-process plug-in (notebooks, tests) under the same
rules. Each family's contract is the Protocol named in PROTOCOLS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

from fbmem_data.errors import PluginError

T = TypeVar("T")

SEGMENTERS = "fbmem.segmenters"
EMBEDDERS = "fbmem.embedders"
METRICS = "fbmem.metrics"
MITIGATIONS = "fbmem.mitigations"
UTILITIES = "fbmem.utilities"
DISTRIBUTORS = "fbmem.distributors"
MODELS = "fbmem.models"
WEIGHTS = "fbmem.weights"
TEST_BEDS = "fbmem.beds"

FAMILIES = (SEGMENTERS, EMBEDDERS, METRICS, MITIGATIONS, UTILITIES, DISTRIBUTORS, MODELS, WEIGHTS, TEST_BEDS)

#: The contract of each family ("module:Protocol"), imported only when asked for (`protocol`).
PROTOCOLS: dict[str, str] = {
    SEGMENTERS: "fbmem_data.segment.base:Segmenter",
    EMBEDDERS: "fbmem_data.embed.base:Embedder",
    METRICS: "fbmem_data.similarity.base:RegionMetric",
    MITIGATIONS: "fbmem_data.mitigate.protocol:Mitigation",
    UTILITIES: "fbmem_data.utility.base:UtilityMetric",
    DISTRIBUTORS: "fbmem_data.distribute.protocol:Distributor",
    MODELS: "fbmem_data.generate.loading:ModelSource",
    WEIGHTS: "fbmem_data.doctor.registry:ModelSpec",
    TEST_BEDS: "fbmem_data.evaluate.beds:Bed",
}

# The short names the families had before they were entry-point groups; still accepted.
_ALIASES = {
    "segmenter": SEGMENTERS,
    "embedder": EMBEDDERS,
    "metric": METRICS,
    "mitigation": MITIGATIONS,
    "utility": UTILITIES,
    "distributor": DISTRIBUTORS,
    "model": MODELS,
    "weights": WEIGHTS,
    "bed": TEST_BEDS,
}


@dataclass
class _Plugin:
    name: str
    provider: str  # "module:attr (distribution)" or "module:attr (registered in process)"
    target: str | None = None  # "module:attr" of an entry point, loaded on first use
    factory: Callable[..., Any] | None = None


_discovered: dict[str, dict[str, _Plugin]] = {}
_registered: dict[str, dict[str, _Plugin]] = {}


def family_group(family: str) -> str:
    """The entry-point group of `family` (a FAMILIES constant or its old short name).

    Raises:
        PluginError: not a plug-in family.
    """
    group = _ALIASES.get(family, family)
    if group not in FAMILIES:
        raise PluginError(f"unknown plug-in family {family!r}", hint=f"families: {', '.join(FAMILIES)}")
    return group


def _describe(obj: Callable[..., Any]) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _add(table: dict[str, _Plugin], group: str, plugin: _Plugin) -> None:
    same = table.get(plugin.name)
    if same is not None and same.provider != plugin.provider:
        raise PluginError(
            f"two {group} plug-ins are named {plugin.name!r}: {same.provider} and {plugin.provider}",
            hint="uninstall one of the two packages, or rename one of the entry points",
        )
    table[plugin.name] = plugin


def _plugins(group: str) -> dict[str, _Plugin]:
    if group not in _discovered:
        table: dict[str, _Plugin] = {}
        for ep in metadata.entry_points(group=group):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            _add(table, group, _Plugin(ep.name, f"{ep.value} ({dist})", target=ep.value))
        _discovered[group] = table
    merged = dict(_discovered[group])
    for plugin in _registered.get(group, {}).values():
        _add(merged, group, plugin)
    return merged


def refresh() -> None:
    """Forget discovered entry points (after installing a package into the running interpreter)."""
    _discovered.clear()


def register(family: str, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: add `factory` as plug-in `name` of `family` in this process.

    Raises:
        PluginError: the name is taken by another provider (an entry point or another registration).
    """
    group = family_group(family)

    def decorate(factory: Callable[..., T]) -> Callable[..., T]:
        plugin = _Plugin(name, f"{_describe(factory)} (registered in process)", factory=factory)
        _add(dict(_plugins(group)), group, plugin)  # check against everything first
        _registered.setdefault(group, {})[name] = plugin
        return factory

    return decorate


def unregister(family: str, name: str) -> None:
    """Remove an in-process registration (entry points stay)."""
    _registered.get(family_group(family), {}).pop(name, None)


def names(family: str) -> list[str]:
    """The plug-in names of `family`, sorted (no plug-in module is imported).

    Raises:
        PluginError: unknown family, or two providers share a name.
    """
    return sorted(_plugins(family_group(family)))


def provider(family: str, name: str) -> str:
    """Where plug-in `name` comes from ("module:attr (distribution)")."""
    return _get(family_group(family), name).provider


def _get(group: str, name: str) -> _Plugin:
    table = _plugins(group)
    if name not in table:
        singular = next(short for short, g in _ALIASES.items() if g == group)
        raise PluginError(
            f"unknown {singular} {name!r}", hint=f"available: {', '.join(sorted(table)) or 'none'}"
        )
    return table[name]


def load(family: str, name: str) -> Callable[..., Any]:
    """The factory (function or class) of plug-in `name`, importing its module now.

    Raises:
        PluginError: unknown family or name, or the plug-in's module cannot be imported.
    """
    group = family_group(family)
    plugin = _get(group, name)
    if plugin.factory is None:
        assert plugin.target is not None
        module, _, attr = plugin.target.partition(":")
        try:
            obj: Any = importlib.import_module(module.strip())
            for part in attr.strip().split(".") if attr.strip() else []:
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise PluginError(
                f"{group} plug-in {name!r} ({plugin.provider}) cannot be loaded: {exc}",
                hint="install the package that provides it (and its dependencies), or fix its entry point",
            ) from exc
        plugin.factory = obj
    return plugin.factory


def create(family: str, name: str, **kwargs: Any) -> Any:
    """Build plug-in `name` of `family` with keyword options.

    Raises:
        PluginError: unknown family or name, or the plug-in cannot be loaded. The factory's own errors
            (bad options, missing weights) pass through.
    """
    return load(family, name)(**kwargs)


def protocol(family: str) -> type:
    """The Protocol class a plug-in of `family` implements."""
    module, _, attr = PROTOCOLS[family_group(family)].partition(":")
    return getattr(importlib.import_module(module), attr)
