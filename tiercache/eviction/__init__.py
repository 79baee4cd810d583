"""Eviction algorithms, one module each, found by name through :func:`create_policy`."""

from __future__ import annotations

from typing import Any

from .base import EvictionPolicy, Key, PolicyInvariantError
from .lru import LRU

#: name -> class. Each algorithm module adds itself here.
REGISTRY: dict[str, type[EvictionPolicy]] = {cls.name: cls for cls in (LRU,)}


class UnknownPolicyError(ValueError):
    """An eviction name or parameter that no algorithm accepts."""


def create_policy(name: str, capacity: int, **params: Any) -> EvictionPolicy:
    """Build the algorithm registered as ``name`` for a tier of ``capacity`` bytes."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise UnknownPolicyError(
            f"unknown eviction {name!r}; valid: {', '.join(sorted(REGISTRY))}"
        ) from None
    try:
        return cls(capacity, **params)
    except TypeError as exc:
        raise UnknownPolicyError(f"eviction {name!r}: bad parameters {params}: {exc}") from None


__all__ = [
    "REGISTRY",
    "EvictionPolicy",
    "Key",
    "PolicyInvariantError",
    "UnknownPolicyError",
    "create_policy",
]


def policy_from_spec(spec: str | dict[str, Any], capacity: int) -> EvictionPolicy:
    """Build from a config value: ``"s3fifo"`` or ``{name = "s3fifo", small_ratio = 0.1}``."""
    if isinstance(spec, str):
        return create_policy(spec, capacity)
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str):
        raise UnknownPolicyError(
            f"an eviction table needs name = one of {', '.join(sorted(REGISTRY))}"
        )
    return create_policy(name, capacity, **params)
