"""Eviction algorithms, one module each, found by name through :func:`create_policy`.

Per-tier configuration names an algorithm either as a string (``eviction = "s3fifo"``) or as a
table with parameters (``eviction = {name = "s3fifo", small_ratio = 0.1}``);
:func:`policy_from_spec` turns either into a policy object.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from .arc import ARC
from .base import EvictionPolicy, Key, PolicyInvariantError
from .belady import Belady
from .clock import Clock
from .fifo import FIFO
from .lfu import LFU
from .lru import LRU
from .s3fifo import S3FIFO
from .sieve import Sieve
from .static import Static
from .twoq import TwoQ
from .wtinylfu import WTinyLFU

#: name -> class. Each algorithm module adds itself here.
REGISTRY: dict[str, type[EvictionPolicy]] = {
    cls.name: cls
    for cls in (LRU, FIFO, Clock, LFU, Sieve, S3FIFO, ARC, TwoQ, WTinyLFU, Static, Belady)
}


class UnknownPolicyError(ValueError):
    """An eviction name or parameter that no algorithm accepts."""


def policy_parameters(name: str) -> dict[str, Any]:
    """The keyword parameters ``name`` accepts, with their defaults."""
    parameters = list(inspect.signature(_lookup(name).__init__).parameters.values())
    return {p.name: p.default for p in parameters[2:] if p.kind is not p.VAR_KEYWORD}


def _lookup(name: str) -> type[EvictionPolicy]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownPolicyError(
            f"unknown eviction {name!r}; valid: {', '.join(sorted(REGISTRY))}"
        ) from None


def create_policy(name: str, capacity: int, **params: Any) -> EvictionPolicy:
    """Build the algorithm registered as ``name`` for a tier of ``capacity`` bytes."""
    cls = _lookup(name)
    accepted = policy_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
        raise UnknownPolicyError(
            f"eviction {name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"valid parameters (with defaults): {valid}"
        )
    try:
        return cls(capacity, **params)
    except (TypeError, ValueError) as exc:
        raise UnknownPolicyError(f"eviction {name!r}: bad parameters {params}: {exc}") from None


def policy_from_spec(spec: str | Mapping[str, Any], capacity: int) -> EvictionPolicy:
    """Build a policy from a config value: ``"name"`` or ``{"name": ..., <parameters>}``."""
    if isinstance(spec, str):
        return create_policy(spec, capacity)
    if isinstance(spec, Mapping):
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise UnknownPolicyError(
                f"eviction table needs a string 'name' (one of {', '.join(sorted(REGISTRY))}),"
                f" got {spec!r}"
            )
        return create_policy(name, capacity, **params)
    raise UnknownPolicyError(
        f"eviction must be a name or a table with 'name', got {type(spec).__name__}: {spec!r}"
    )


__all__ = [
    "REGISTRY",
    "EvictionPolicy",
    "Key",
    "PolicyInvariantError",
    "UnknownPolicyError",
    "create_policy",
    "policy_from_spec",
    "policy_parameters",
]
