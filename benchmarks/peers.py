"""MosaicML ``streaming`` and Lightning ``litdata`` over the benchmark's bytes, if installed.

Install them without letting them replace the local CPU torch (see docs/performance.md)::

    echo torch==2.13.0 > /tmp/constraints.txt
    pip install -c /tmp/constraints.txt mosaicml-streaming==0.13.0 litdata==0.2.76

Two workarounds, both for this machine's CPU-only torch and moto's plain-HTTP endpoint:

* ``import streaming`` runs ``streaming/__init__``, which imports ``streaming.vision`` and so
  a torchvision built for CUDA ("operator torchvision::nms does not exist" on CPU torch).
  :func:`import_streaming_base` registers a bare ``streaming`` package whose ``__path__``
  is the installed one, so ``streaming.base`` (all the benchmark uses) imports alone.
* litdata's obstore client ignores ``AWS_ALLOW_HTTP``; :func:`litdata_allow_http` sets its
  client option instead (fork-started DataLoader workers inherit it).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def import_streaming_base() -> Any:
    """``streaming.base`` without ``streaming/__init__`` (which pulls in torchvision)."""
    if "streaming" not in sys.modules:
        spec = importlib.util.find_spec("streaming")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("mosaicml-streaming is not installed")
        package = types.ModuleType("streaming")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["streaming"] = package
    import streaming.base

    return streaming.base


def litdata_allow_http() -> None:
    import litdata.streaming.downloader as downloader

    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True


def samples(token_files: list[Path], seq_len: int, dtype: str) -> Iterator[np.ndarray]:
    """The benchmark's samples, in order, from its local token files."""
    for path in token_files:
        tokens = np.fromfile(path, dtype=dtype)
        for i in range(len(tokens) // seq_len):
            yield tokens[i * seq_len : (i + 1) * seq_len]


def write_mds(token_files: list[Path], out: Path, seq_len: int, dtype: str,
              shard_bytes: int) -> None:  # fmt: skip
    sb = import_streaming_base()
    with sb.MDSWriter(out=str(out), columns={"tokens": f"ndarray:{dtype}:{seq_len}"},
                      size_limit=shard_bytes, compression=None) as writer:  # fmt: skip
        for sample in samples(token_files, seq_len, dtype):
            writer.write({"tokens": sample})


class MosaicTokens(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """A ``StreamingDataset`` yielding bare token tensors (like ours); picklable."""

    def __init__(self, remote: str, local: Path, batch_size: int, cache_limit: int | None,
                 shuffle_block_size: int | None = None) -> None:  # fmt: skip
        sb = import_streaming_base()
        extra = {"shuffle_block_size": shuffle_block_size} if shuffle_block_size else {}
        self.inner = sb.StreamingDataset(remote=remote, local=str(local), shuffle=True,
                                         shuffle_seed=0, batch_size=batch_size,
                                         cache_limit=cache_limit, **extra)  # fmt: skip

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for sample in self.inner:
            yield torch.from_numpy(sample["tokens"].astype(np.int64))


def _litdata_sample(index: int, files: list[str], seq_len: int, dtype: str,
                    per_file: int) -> dict[str, Any]:  # fmt: skip
    f, j = divmod(index, per_file)
    tokens = np.memmap(files[f], dtype=dtype, mode="r")
    return {"tokens": np.array(tokens[j * seq_len : (j + 1) * seq_len])}


def write_litdata(token_files: list[Path], out: Path, seq_len: int, dtype: str,
                  shard_bytes: int) -> None:  # fmt: skip
    import functools

    import litdata

    per_file = os.path.getsize(token_files[0]) // np.dtype(dtype).itemsize // seq_len
    fn = functools.partial(_litdata_sample, files=[str(p) for p in token_files],
                           seq_len=seq_len, dtype=dtype, per_file=per_file)  # fmt: skip
    import multiprocessing

    method = multiprocessing.get_start_method()
    try:
        litdata.optimize(fn=fn, inputs=list(range(per_file * len(token_files))),
                         output_dir=str(out), chunk_bytes=shard_bytes, num_workers=1,
                         mode="overwrite")  # fmt: skip
    finally:  # optimize() forces the global start method to spawn; put it back
        multiprocessing.set_start_method(method, force=True)


def _lit_tokens(sample: dict[str, Any]) -> Any:
    """litdata ``transform``: bare token tensors, like ours (module level: picklable)."""
    return torch.from_numpy(np.asarray(sample["tokens"]).astype(np.int64))


def litdata_loader(remote: str, cache_dir: Path, batch_size: int, workers: int,
                   max_cache_size: int | None) -> Any:  # fmt: skip
    import litdata

    litdata_allow_http()
    extra: dict[str, Any] = {}
    if max_cache_size:
        extra["max_cache_size"] = max_cache_size

    ds = litdata.StreamingDataset(
        input_dir=litdata.streaming.resolver.Dir(path=str(cache_dir), url=remote),
        shuffle=True, seed=0, transform=_lit_tokens, **extra,
    )  # fmt: skip
    # fork: the workers inherit the allow_http option set above (spawn would lose it)
    return litdata.StreamingDataLoader(ds, batch_size=batch_size, num_workers=workers,
                                       multiprocessing_context="fork")  # fmt: skip
