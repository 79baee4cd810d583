"""Cache configuration: TOML files, presets from ``policies/``, dicts, or ``$TIERCACHE_CONFIG``.

Everything a user can get wrong is checked here, once, with an error that names the key,
the bad value and what is allowed, so the engine can trust what it is handed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .localfs import mount_of, user_cache_home
from .sizes import parse_size
from .write.settings import WriteConfig, parse_write

if TYPE_CHECKING:
    from .cluster.settings import ClusterConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = Path(__file__).resolve().parent / "policies"
ENV_VAR = "TIERCACHE_CONFIG"

VALIDATION_MODES = ("always", "ttl", "never")
COMPRESSIONS = ("none", "lz4")
VERIFY_MODES = ("auto", "always", "on-change")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True)
class TierConfig:
    """One storage tier: a directory with a byte budget and an eviction algorithm."""

    name: str
    path: Path
    capacity: int
    eviction: str | dict[str, Any] = "lru"
    compression: str = "none"
    #: "always": checksum a blob when it comes from disk into use (shared node-wide for
    #: ``verify_ttl_seconds``); "on-change": checksum when the blob file's identity (inode,
    #: size, mtime) differs from what was verified before. Memory tiers cannot rot, so
    #: re-hashing unchanged shared-memory files buys nothing. The config's "auto" (the
    #: default) is resolved when it is read: "on-change" on tmpfs/ramfs, else "always".
    verify: str = "always"
    #: Never let the filesystem's free space fall below this (bytes).
    min_free: int = 0
    #: Objects up to this size live in the tier's small-object store, not one file each.
    small_object_bytes: int = 64 * 1024
    #: With verify = "always": a blob one process verified counts as verified for every
    #: process on the node for this long (while its file is unchanged), so N DataLoader
    #: workers reading one shard hash it once, not N times. 0: every open hashes.
    verify_ttl_seconds: float = 600.0


@dataclass(frozen=True)
class ValidationConfig:
    """When to check that a cached object still matches the origin (ETag, size, mtime)."""

    mode: str = "ttl"
    ttl_seconds: float = 60.0


@dataclass(frozen=True)
class PrefetchConfig:
    """How far ahead of the consumer the engine fetches when it is given hints."""

    depth_bytes: int = 1024**3
    concurrency: int = 16


@dataclass(frozen=True)
class PromotionConfig:
    """Hits a key needs in a slower tier before it moves to the next faster one (0: never)."""

    hits: int = 2


@dataclass(frozen=True)
class AdmissionConfig:
    """Where a miss lands (a tier name)."""

    tier: str = ""


@dataclass(frozen=True)
class OriginConfig:
    """How the origin is read: retries, time limits, and parallelism for ``warm``."""

    retries: int = 5
    timeout_seconds: float = 60.0
    concurrency: int = 16
    #: Serve cached data and last-known listings without asking an unreachable origin.
    offline: bool = False
    #: S3 GETs by presigned URL and http.client (see tiercache.s3direct); off: all via s3fs.
    direct_get: bool = True
    #: Objects larger than this are cached as blocks of this size (tiercache.blocks): a
    #: range read fetches only its blocks, and a cold whole read is many ranged GETs.
    block_size: int = 16 * 1024**2
    #: Ranged GETs of blocks in flight at once, node-wide (a sliding window).
    block_concurrency: int = 16
    #: Blocks fetched ahead of a file read sequentially (the window grows up to this).
    readahead_blocks: int = 8
    #: A ranged GET that receives no byte for this long is abandoned and retried (the body
    #: as a whole has no time limit: a large object takes as long as the bandwidth needs).
    progress_timeout_seconds: float = 30.0


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus exporter; ``port = 0`` leaves it off."""

    port: int = 0
    bind: str = "127.0.0.1"


@dataclass(frozen=True)
class Config:
    tiers: tuple[TierConfig, ...]
    index_path: Path
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    prefetch: PrefetchConfig = field(default_factory=PrefetchConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    origin: OriginConfig = field(default_factory=OriginConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    #: The write tier (``[write]``); None only for a Config built by hand: writes refused.
    write: WriteConfig | None = None
    #: If set, every access is appended here as JSON lines (``tiercache simulate`` reads it).
    trace: Path | None = None
    #: ``[cluster]``: engines on other nodes this one pools its tiers with (None: alone).
    cluster: ClusterConfig | None = None
    #: Let the index and tiers live on network or shared filesystems (NFS, Lustre, FUSE...).
    allow_network_fs: bool = False
    #: Where the config came from, for messages.
    source: str = "<dict>"

    def tier(self, name: str) -> TierConfig:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise ConfigError(f"no tier named {name!r}; tiers: {', '.join(self.tier_names)}")

    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_config(source: Config | dict[str, Any] | str | os.PathLike[str] | None = None) -> Config:
    """Load a config from a dict, a TOML path, a preset name, or ``$TIERCACHE_CONFIG``.

    ``None`` means ``$TIERCACHE_CONFIG`` if set, else the ``default`` preset.
    """
    if isinstance(source, Config):
        return source
    if source is None:
        source = os.environ.get(ENV_VAR) or "default"
    if isinstance(source, dict):
        return parse_config(source, origin="<dict>")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if text.endswith(".toml") or os.sep in text or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file {text!r} does not exist")
        return _load_toml(path)
    preset = PRESET_DIR / f"{text}.toml"
    if not preset.is_file():
        raise ConfigError(
            f"unknown policy preset {text!r}; presets: {', '.join(preset_names())} "
            "(or give a path to a .toml file)"
        )
    return _load_toml(preset)


def _load_toml(path: Path) -> Config:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, origin=str(path))


def parse_config(data: dict[str, Any], *, origin: str = "<dict>") -> Config:
    """Validate a config mapping and resolve sizes and paths."""
    reader = _Reader(data, origin)
    raw_tiers = reader.pop("tiers", list, required=True)
    if not raw_tiers:
        raise reader.error("tiers", raw_tiers, "at least one [[tiers]] table")
    tiers = tuple(_parse_tier(i, t, origin) for i, t in enumerate(raw_tiers))
    names = [t.name for t in tiers]
    for name in names:
        if names.count(name) > 1:
            raise reader.error("tiers.name", name, "unique tier names")

    validation = _section(reader, "validation", ValidationConfig, _parse_validation)
    prefetch = _section(reader, "prefetch", PrefetchConfig, _parse_prefetch)
    promotion = _section(reader, "promotion", PromotionConfig, _parse_promotion)
    origin_cfg = _section(reader, "origin", OriginConfig, _parse_origin)
    metrics = _section(reader, "metrics", MetricsConfig, _parse_metrics)
    admission = _section(reader, "admission", AdmissionConfig, _parse_admission)
    if admission.tier and admission.tier not in names:
        raise reader.error("admission.tier", admission.tier, f"one of {names}")
    if not admission.tier:
        admission = AdmissionConfig(tier=names[0])

    index = reader.pop("index", dict, default={})
    index_reader = _Reader(index, origin, prefix="index.")
    index_path = _path(
        index_reader.pop("path", str, default=str(tiers[-1].path / "index")), "index.path"
    )
    index_reader.done()
    trace = reader.pop("trace", str, default="")
    cluster = _cluster_section(reader)
    allow_network_fs = reader.pop("allow_network_fs", bool, default=False)
    write = parse_write(reader, tiers)
    reader.done()
    return Config(
        tiers=tiers,
        index_path=index_path,
        validation=validation,
        prefetch=prefetch,
        promotion=promotion,
        admission=admission,
        origin=origin_cfg,
        metrics=metrics,
        write=write,
        trace=_path(trace, "trace") if trace else None,
        cluster=cluster,
        source=origin,
        allow_network_fs=allow_network_fs,
    )


def _cluster_section(reader: _Reader) -> ClusterConfig | None:
    raw = reader.pop("cluster", dict, default=None)
    if raw is None:
        return None
    from .cluster.settings import parse_cluster

    sub = _Reader(raw, reader.origin, prefix="cluster.")
    value = parse_cluster(sub)
    sub.done()
    return value


class _Reader:
    """Pops keys off one table, checking types; ``done`` rejects keys nobody asked for."""

    def __init__(self, data: Any, origin: str, prefix: str = "") -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: {prefix.rstrip('.') or 'config'} must be a table")
        self.data = dict(data)
        self.origin = origin
        self.prefix = prefix
        self.known: list[str] = []

    def error(self, key: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"{self.origin}: {self.prefix}{key} = {value!r} is invalid; {allowed}")

    def pop(
        self,
        key: str,
        kind: type | tuple[type, ...],
        *,
        default: Any = None,
        required: bool = False,
    ) -> Any:
        self.known.append(key)
        if key not in self.data:
            if required:
                raise ConfigError(f"{self.origin}: missing required key {self.prefix}{key}")
            return default
        value = self.data.pop(key)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, value, f"expected {_kind_names(kinds)}")
        if not isinstance(value, kinds):
            raise self.error(key, value, f"expected {_kind_names(kinds)}")
        return value

    def done(self) -> None:
        if self.data:
            unknown = ", ".join(f"{self.prefix}{k}" for k in self.data)
            raise ConfigError(
                f"{self.origin}: unknown key {unknown}; allowed here: "
                + ", ".join(f"{self.prefix}{k}" for k in self.known)
            )


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        dict: "a table",
        list: "a list",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _section(reader: _Reader, key: str, cls: type, parse: Any) -> Any:
    raw = reader.pop(key, dict, default=None)
    if raw is None:
        return cls()
    sub = _Reader(raw, reader.origin, prefix=f"{key}.")
    value = parse(sub)
    sub.done()
    return value


def _path(text: str, key: str) -> Path:
    """A configured path: ``{uid}`` is the user's id, ``{cache_home}`` the user's local cache
    directory (see ``localfs.user_cache_home``), then ``$VARS`` and ``~`` are expanded."""
    if not text:
        raise ConfigError(f"{key} must not be empty")
    if "{uid}" in text:
        text = text.replace("{uid}", str(os.getuid()))
    if "{cache_home}" in text:
        text = text.replace("{cache_home}", str(user_cache_home()))
    return Path(os.path.expandvars(text)).expanduser().absolute()


def _filesystem_size(path: Path) -> int:
    """Total bytes of the filesystem that holds (or will hold) ``path``."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    return st.f_blocks * st.f_frsize


def _parse_tier(i: int, raw: Any, origin: str) -> TierConfig:
    r = _Reader(raw, origin, prefix=f"tiers[{i}].")
    name = r.pop("name", str, required=True)
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise r.error("name", name, "use letters, digits, '-' and '_'")
    path = _path(r.pop("path", str, required=True), f"tiers[{i}].path")
    total = _filesystem_size(path)
    capacity = _size(r, "capacity", r.pop("capacity", (int, str), required=True), total)
    eviction = r.pop("eviction", (str, dict), default="lru")
    _check_eviction(r, eviction, capacity)
    compression = r.pop("compression", str, default="none")
    if compression not in COMPRESSIONS:
        raise r.error("compression", compression, f"one of {', '.join(COMPRESSIONS)}")
    verify = r.pop("verify", str, default="auto")
    if verify not in VERIFY_MODES:
        raise r.error("verify", verify, f"one of {', '.join(VERIFY_MODES)}")
    if verify == "auto":
        verify = "on-change" if mount_of(path).is_memory else "always"
    verify_ttl = _number(r, "verify_ttl_seconds", 600.0, minimum=0)
    min_free = _size(r, "min_free", r.pop("min_free", (int, str), default="1%"), total)
    small = _size(r, "small_object_bytes", r.pop("small_object_bytes", (int, str), default=65536))
    if small > 16 * 1024**2:
        raise r.error("small_object_bytes", small, "at most 16MiB")
    r.done()
    return TierConfig(
        name, path, capacity, eviction, compression, verify, min_free, small, verify_ttl
    )


def _size(r: _Reader, key: str, value: Any, total: int | None = None) -> int:
    try:
        return parse_size(value, key=f"{r.prefix}{key}", total=total)
    except ValueError as exc:
        raise ConfigError(f"{r.origin}: {exc}") from None


def _check_eviction(r: _Reader, spec: str | dict[str, Any], capacity: int) -> None:
    from .eviction import UnknownPolicyError, policy_from_spec

    try:
        policy_from_spec(spec, capacity)
    except UnknownPolicyError as exc:
        raise ConfigError(f"{r.origin}: {r.prefix}eviction: {exc}") from None


def _number(r: _Reader, key: str, default: float, *, minimum: float) -> float:
    value = r.pop(key, (int, float), default=default)
    if value < minimum:
        raise r.error(key, value, f"must be >= {minimum}")
    return float(value)


def _integer(r: _Reader, key: str, default: int, *, minimum: int) -> int:
    value = r.pop(key, int, default=default)
    if value < minimum:
        raise r.error(key, value, f"must be an integer >= {minimum}")
    return int(value)


def _parse_validation(r: _Reader) -> ValidationConfig:
    mode = r.pop("mode", str, default="ttl")
    if mode not in VALIDATION_MODES:
        raise r.error("mode", mode, f"one of {', '.join(VALIDATION_MODES)}")
    return ValidationConfig(mode, _number(r, "ttl_seconds", 60.0, minimum=0))


def _parse_prefetch(r: _Reader) -> PrefetchConfig:
    depth = _size(r, "depth_bytes", r.pop("depth_bytes", (int, str), default="1GiB"))
    return PrefetchConfig(depth, _integer(r, "concurrency", 16, minimum=1))


def _parse_promotion(r: _Reader) -> PromotionConfig:
    return PromotionConfig(_integer(r, "hits", 2, minimum=0))


def _parse_admission(r: _Reader) -> AdmissionConfig:
    return AdmissionConfig(r.pop("tier", str, default=""))


def _parse_origin(r: _Reader) -> OriginConfig:
    return OriginConfig(
        retries=_integer(r, "retries", 5, minimum=0),
        timeout_seconds=_number(r, "timeout_seconds", 60.0, minimum=0.001),
        concurrency=_integer(r, "concurrency", 16, minimum=1),
        offline=r.pop("offline", bool, default=False),
        direct_get=r.pop("direct_get", bool, default=True),
        block_size=_block_size(r),
        block_concurrency=_integer(r, "block_concurrency", 16, minimum=1),
        readahead_blocks=_integer(r, "readahead_blocks", 8, minimum=0),
        progress_timeout_seconds=_number(r, "progress_timeout_seconds", 30.0, minimum=0.001),
    )


def _block_size(r: _Reader) -> int:
    size = _size(r, "block_size", r.pop("block_size", (int, str), default="16MiB"))
    if not 64 * 1024 <= size <= 1024**3:
        raise r.error("block_size", size, "between 64KiB and 1GiB")
    return size


def _parse_metrics(r: _Reader) -> MetricsConfig:
    port = _integer(r, "port", 0, minimum=0)
    if port > 65535:
        raise r.error("port", port, "a TCP port, 0-65535 (0 = off)")
    return MetricsConfig(port, r.pop("bind", str, default="127.0.0.1"))
