"""A small registry for plug-in families (segmenters, embedders, metrics, mitigations, engines).

Plug-ins register a factory under a family and a name; `create` builds one and says which names
exist when asked for an unknown one. Factories import their heavy dependencies when called,
never at registration, so listing plug-ins stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fbmem_data.errors import PluginError

T = TypeVar("T")

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {}


def register(family: str, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: register `factory` as plug-in `name` of `family`."""

    def decorate(factory: Callable[..., T]) -> Callable[..., T]:
        _REGISTRY.setdefault(family, {})[name] = factory
        return factory

    return decorate


def names(family: str) -> list[str]:
    return sorted(_REGISTRY.get(family, {}))


def create(family: str, name: str, **kwargs: Any) -> Any:
    """Build plug-in `name` of `family` with keyword options.

    Raises:
        PluginError: no plug-in of that name is registered.
    """
    factories = _REGISTRY.get(family, {})
    if name not in factories:
        raise PluginError(f"unknown {family} {name!r}", hint=f"available: {', '.join(names(family)) or 'none'}")
    return factories[name](**kwargs)
