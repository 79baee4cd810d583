"""Naming an origin to a peer, and rebuilding it there, without sending credentials.

A peer that owns a key must read it from the origin on its own miss, so a request names the
origin: its fsspec protocol and storage options as JSON. Secrets (keys, tokens, passwords)
are left out: the owner reads with its own credentials, those of a matching origin its own
readers opened (training jobs read the same bucket on every node), else its environment's
(instance role, ``AWS_*`` variables). Options that are not plain JSON values are left out
too, so nothing but data ever crosses the wire (no pickles).

An owner reads only object-store origins for others (or ones its own readers opened): a
peer must not be able to make it read its local files or fetch URLs on its network.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..origin import Origin

#: Option names that hold credentials (matched case-insensitively, anywhere in the name).
_SECRET = re.compile(r"secret|token|password|passwd|credential|signature|sas|^key$|access_key")
#: Origins an owner builds for a peer from the request alone: object stores only.
REMOTE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oss"})
_KEEP = 16


def public_options(options: Any) -> Any:
    """``options`` without credentials or values JSON cannot carry (recursively)."""
    if isinstance(options, dict):
        out = {}
        for name, value in options.items():
            if not isinstance(name, str) or _SECRET.search(name.lower()):
                continue
            kept = public_options(value)
            if kept is not _DROP:
                out[name] = kept
        return out
    if isinstance(options, (list, tuple)):
        items = [public_options(v) for v in options]
        return [v for v in items if v is not _DROP]
    if options is None or isinstance(options, (str, int, float, bool)):
        return options
    return _DROP


_DROP = object()


def spec_of(origin: Origin) -> str:
    """The origin as a peer request names it: canonical JSON, no secrets."""
    cached = _SPECS.get(origin)
    if cached is None:
        options = public_options(dict(getattr(origin.fs, "storage_options", {}) or {}))
        cached = json.dumps(
            {"protocol": origin.protocol, "options": options}, sort_keys=True, separators=(",", ":")
        )
        _SPECS[origin] = cached
    return cached


_SPECS: weakref.WeakKeyDictionary[Origin, str] = weakref.WeakKeyDictionary()


class OriginBook:
    """The owner's side: the origins its own readers opened, and ones built for peers."""

    def __init__(self, build: Callable[[Any], Origin]) -> None:
        self._build = build  # fsspec filesystem -> Origin (the engine's settings and counters)
        self._seen: OrderedDict[str, Origin] = OrderedDict()
        self._built: OrderedDict[str, Origin] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, origin: Origin) -> None:
        """An origin a local reader used: preferred for peers naming the same one."""
        spec = spec_of(origin)
        with self._lock:
            self._seen[spec] = origin
            self._seen.move_to_end(spec)
            while len(self._seen) > _KEEP:
                self._seen.popitem(last=False)

    def resolve(self, spec: str) -> Origin:
        """The origin ``spec`` names; ValueError (naming why) for one this node will not read."""
        with self._lock:
            origin = self._seen.get(spec) or self._built.get(spec)
        if origin is not None:
            return origin
        try:
            parsed = json.loads(spec)
            protocol = parsed["protocol"]
            options = parsed["options"]
        except (ValueError, KeyError, TypeError):
            raise ValueError("origin spec is not {protocol, options} JSON") from None
        if not isinstance(protocol, str) or not isinstance(options, dict):
            raise ValueError("origin spec is not {protocol, options} JSON")
        if protocol not in REMOTE_PROTOCOLS:
            raise ValueError(
                f"this node reads {protocol}:// origins only for its own readers, not for peers"
            )
        import fsspec

        fs = fsspec.filesystem(protocol, **options)
        origin = self._build(fs)
        with self._lock:
            self._built[spec] = origin
            while len(self._built) > _KEEP:
                self._built.popitem(last=False)
        return origin
