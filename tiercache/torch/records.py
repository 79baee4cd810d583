"""The project's record-shard format: samples packed into shards, plus an index.

Layout under a prefix::

    manifest.json        {"format": "tiercache.records", "version": 1, "samples": N,
                          "shards": [{"name", "bytes", "samples"}, ...]}
    index.npy            int64 array (N, 3): shard number, byte offset, byte length
    shard-00000.tcr      b"TCRSHRD1" then the samples' bytes back to back

Why this shape: a sample is one range read of one shard, found without reading the shard;
shards are big enough (default 64 MiB) that object-store request costs vanish; samples are
numbered in write order so a shard's samples are contiguous, which is what the shard-aware
shuffle needs. The cache checksums whole shards, so records carry no checksums of their own.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .base import ShardedDataset
from .source import CacheSpec, Source
from .writer import put_objects

MAGIC = b"TCRSHRD1"
FORMAT = "tiercache.records"
VERSION = 1


def _as_bytes(sample: Any) -> bytes | bytearray | memoryview:
    if isinstance(sample, (bytes, bytearray, memoryview)):
        return sample
    if isinstance(sample, np.ndarray):
        return np.ascontiguousarray(sample).tobytes()
    if isinstance(sample, str):
        return sample.encode()
    raise TypeError(
        f"write_shards takes bytes-like samples (or str / numpy arrays), not "
        f"{type(sample).__name__}; encode it first (e.g. pickle.dumps, np.save)"
    )


def write_shards(samples: Iterable[Any], url: str, *, shard_bytes: int = 64 * 2**20,
                 storage_options: dict[str, Any] | None = None, prefix: str = "shard",
                 concurrency: int = 8) -> dict[str, Any]:  # fmt: skip
    """Pack bytes-like samples into record shards of about ``shard_bytes`` under ``url``.

    A sample never straddles shards (a shard may exceed ``shard_bytes`` by its last sample).
    Writes the shards, then ``index.npy``, then ``manifest.json`` last, so a reader never sees
    a manifest that points at missing shards. Returns the manifest.
    """
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
    index: list[tuple[int, int, int]] = []
    shards: list[dict[str, Any]] = []

    def produce() -> Iterable[tuple[str, bytes]]:
        buf = io.BytesIO()
        buf.write(MAGIC)
        count = 0
        for sample in samples:
            data = _as_bytes(sample)
            if count and buf.tell() + len(data) > shard_bytes:
                yield _finish(buf, count)
                buf = io.BytesIO()
                buf.write(MAGIC)
                count = 0
            index.append((len(shards), buf.tell(), len(data)))
            buf.write(data)
            count += 1
        if count:
            yield _finish(buf, count)

    def _finish(buf: io.BytesIO, count: int) -> tuple[str, bytes]:
        name = f"{prefix}-{len(shards):05d}.tcr"
        body = buf.getvalue()
        shards.append({"name": name, "bytes": len(body), "samples": count})
        return name, body

    put_objects(produce(), url, storage_options, concurrency)
    table = np.asarray(index, dtype=np.int64).reshape(-1, 3)
    npy = io.BytesIO()
    np.save(npy, table)
    manifest = {"format": FORMAT, "version": VERSION, "samples": len(index), "shards": shards}
    put_objects([("index.npy", npy.getvalue())], url, storage_options, 1)
    put_objects([("manifest.json", json.dumps(manifest, indent=1).encode())], url,
                storage_options, 1)  # fmt: skip
    return manifest


class RecordDataset(ShardedDataset):
    """Samples written by :func:`write_shards`; items are bytes, or ``decode(bytes)``.

    ``decode`` must be picklable (a module-level function) for spawn workers.
    """

    def __init__(self, url: str, *, decode: Callable[[bytes], Any] | None = None,
                 storage_options: dict[str, Any] | None = None, cache: CacheSpec = True,
                 max_open: int = 16) -> None:  # fmt: skip
        self.source = Source(url, storage_options, cache, max_open=max_open)
        self.decode = decode
        fs = self.source.fs
        try:
            raw = fs.cat_file(self.source.join("manifest.json"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no record shards at {url}: manifest.json is missing (write them with "
                "tiercache.torch.write_shards)"
            ) from None
        manifest = _parse_manifest(raw, f"{url}/manifest.json")
        table = _load_index(fs.cat_file(self.source.join("index.npy")), f"{url}/index.npy")
        if table.shape != (manifest["samples"], 3):
            raise ValueError(f"{url}/index.npy has shape {table.shape}, manifest says "
                             f"{manifest['samples']} samples")  # fmt: skip
        self._offsets = np.ascontiguousarray(table[:, 1])
        self._lengths = np.ascontiguousarray(table[:, 2])
        shards = manifest["shards"]
        self._set_shards([self.source.join(s["name"]) for s in shards],
                         [s["samples"] for s in shards])  # fmt: skip

    def __getitem__(self, index: int) -> Any:
        shard, _ = self.locate(index)
        i = index if index >= 0 else index + len(self)
        start = int(self._offsets[i])
        data = self.source.read(self.shard_paths[shard], start, start + int(self._lengths[i]))
        return self.decode(data) if self.decode is not None else data


def _parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """The manifest, checked enough that every later error can name the file."""
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(
            f"{where} is not a {FORMAT} v{VERSION} manifest "
            f"(format={manifest.get('format')!r}, version={manifest.get('version')!r})"
        )
    shards = manifest.get("shards")
    if not isinstance(manifest.get("samples"), int) or not isinstance(shards, list):
        raise ValueError(f"{where}: 'samples' (an integer) and 'shards' (a list) are required")
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict) or not {"name", "samples"} <= shard.keys():
            raise ValueError(f"{where}: shards[{i}] needs 'name' and 'samples'")
    return manifest


def _load_index(raw: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{where}: not a readable .npy index ({exc})") from None
