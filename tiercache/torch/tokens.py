"""Flat token files cut into fixed-length sequences, as in nanoGPT-style pretraining.

A token file is a flat array of token ids: raw ``.bin`` (dtype given by the caller, usually
uint16 for vocabularies under 65,536, else uint32) or ``.npy`` (dtype and header read from
the file). Sample ``i`` of a file is tokens ``[i*L, i*L + L)``, or ``L + 1`` tokens split into
inputs and targets shifted by one when ``targets=True``. Sequences never cross files, so a
sample is always one range read of one shard.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .base import ShardedDataset
from .source import CacheSpec, Source
from .writer import put_objects

SUFFIXES = (".bin", ".npy")


class TokenDataset(ShardedDataset):
    """Fixed-length token sequences from ``.bin``/``.npy`` files under a URL.

    ``url`` is a directory/prefix (every ``*.bin``/``*.npy`` under it, sorted by name), a
    glob (``s3://bucket/train-*.bin``) or one file. Items are int64 tensors of ``seq_len``
    tokens, or ``(x, y)`` with ``y`` shifted by one when ``targets=True``.
    """

    def __init__(self, url: str, seq_len: int, *, dtype: str | np.dtype[Any] = "uint16",
                 targets: bool = False, storage_options: dict[str, Any] | None = None,
                 cache: CacheSpec = True, suffixes: Iterable[str] = SUFFIXES,
                 max_open: int = 16) -> None:  # fmt: skip
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.source = Source(url, storage_options, cache, max_open=max_open)
        self.seq_len = int(seq_len)
        self.targets = targets
        self.default_dtype = np.dtype(dtype)
        files = _list(self.source, tuple(suffixes))
        if not files:
            raise FileNotFoundError(f"no token files ({', '.join(suffixes)}) at {url}")
        headers = _headers(self.source, files, self.default_dtype)
        span = self.seq_len + (1 if targets else 0)
        paths, sizes, self._layout = [], [], []
        for (path, size), (offset, dt) in zip(files, headers, strict=True):
            tokens = (size - offset) // dt.itemsize
            count = max(0, (tokens - (1 if targets else 0)) // self.seq_len)
            if count == 0:
                continue  # shorter than one sequence: nothing to read from it
            paths.append(path)
            sizes.append(count)
            self._layout.append((offset, dt.str))
        if not paths:
            raise ValueError(f"no token file at {url} holds even one sequence of {span} tokens")
        self._set_shards(paths, sizes)

    def __getitem__(self, index: int) -> Any:
        shard, j = self.locate(index)
        offset, dt_str = self._layout[shard]
        dt = np.dtype(dt_str)
        span = self.seq_len + (1 if self.targets else 0)
        start = offset + j * self.seq_len * dt.itemsize
        data = self.source.read(self.shard_paths[shard], start, start + span * dt.itemsize)
        tokens = torch.from_numpy(np.frombuffer(data, dtype=dt).astype(np.int64))
        if self.targets:
            return tokens[:-1], tokens[1:]
        return tokens


def _list(source: Source, suffixes: tuple[str, ...]) -> list[tuple[str, int]]:
    """(path, size) of the token files the URL names, sorted by path."""
    fs, root = source.fs, source.root
    if any(c in root for c in "*?["):
        found = fs.glob(root, detail=True)
    else:
        info = fs.info(root)
        found = {root: info} if info.get("type") == "file" else fs.find(root, detail=True)
    out = [(fs._strip_protocol(p), int(i["size"])) for p, i in found.items()
           if i.get("type", "file") == "file" and p.endswith(suffixes)]  # fmt: skip
    return sorted(out)


def _headers(source: Source, files: list[tuple[str, int]],
             default: np.dtype[Any]) -> list[tuple[int, np.dtype[Any]]]:  # fmt: skip
    """(data offset, dtype) per file; ``.npy`` headers are read with small origin requests
    so that building the dataset does not pull every shard into the cache."""

    def one(item: tuple[str, int]) -> tuple[int, np.dtype[Any]]:
        path, _ = item
        if not path.endswith(".npy"):
            return 0, default
        try:
            head = source.origin.cat_file(path, start=0, end=4096)
        except (OSError, ValueError):
            head = source.fs.cat_file(path, start=0, end=4096)  # an offline origin: the cache
        return _parse_npy_header(head, path)

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(files)))) as pool:
        return list(pool.map(one, files))


def _parse_npy_header(head: bytes, path: str) -> tuple[int, np.dtype[Any]]:
    if head[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npy file (bad magic)")
    major = head[6]
    if major == 1:
        hlen, start = int.from_bytes(head[8:10], "little"), 10
    else:
        hlen, start = int.from_bytes(head[8:12], "little"), 12
    meta = ast.literal_eval(head[start : start + hlen].decode("latin1"))
    if meta.get("fortran_order") or len(meta.get("shape", ())) != 1:
        raise ValueError(f"{path}: token .npy files must be 1-D, C-ordered arrays")
    dtype = np.dtype(meta["descr"])
    if dtype.kind not in "ui":
        raise ValueError(f"{path}: token ids must be integers, not {dtype}")
    return start + hlen, dtype


def write_tokens(tokens: np.ndarray | Iterable[np.ndarray], url: str, *,
                 shard_bytes: int = 64 * 2**20, dtype: str = "uint16",
                 storage_options: dict[str, Any] | None = None, prefix: str = "tokens",
                 concurrency: int = 8) -> list[str]:  # fmt: skip
    """Write token ids as ``{prefix}-00000.bin`` files of about ``shard_bytes`` each.

    Returns the URLs written. Use ``dtype="uint32"`` for vocabularies over 65,535.
    """
    dt = np.dtype(dtype)
    per_shard = max(1, shard_bytes // dt.itemsize)
    chunks = [tokens] if isinstance(tokens, np.ndarray) else tokens

    def shards() -> Iterable[tuple[str, bytes]]:
        pending: list[np.ndarray] = []
        held = 0
        n = 0
        for chunk in chunks:
            arr = np.asarray(chunk)
            if arr.size and (arr.min() < 0 or (dt.kind == "u" and arr.max() > np.iinfo(dt).max)):
                raise ValueError(f"token ids out of range for {dt}")
            arr = arr.astype(dt, copy=False).ravel()
            while arr.size:
                take = min(arr.size, per_shard - held)
                pending.append(arr[:take])
                held += take
                arr = arr[take:]
                if held == per_shard:
                    yield f"{prefix}-{n:05d}.bin", np.concatenate(pending).tobytes()
                    n, pending, held = n + 1, [], 0
        if held:
            yield f"{prefix}-{n:05d}.bin", np.concatenate(pending).tobytes()

    return put_objects(shards(), url, storage_options, concurrency)
