"""Model weights in safetensors files, read through the cache straight into their tensors.

    from tiercache.torch import load_safetensors
    state = load_safetensors("s3://bucket/model/model-00001-of-00004.safetensors",
                             tiercache={"config": "default"}, s3={"endpoint_url": ...})

A safetensors file is an 8-byte header length, a JSON header (name -> dtype, shape, byte
offsets) and the tensors' bytes. This reads the header, allocates every tensor, and fills
them all with one batch of block reads, each tensor's bytes copied (or, cold, received)
straight into its memory: no whole-file buffer, no second copy, every block the file needs
fetched concurrently, and from the cache's tiers when the file is warm.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec
import torch

#: safetensors dtype names -> torch dtypes.
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)

#: A header longer than this is not a safetensors file (the format's own limit is 100 MB).
_MAX_HEADER = 100_000_000


def load_safetensors(
    url: str,
    device: str | torch.device = "cpu",
    *,
    fs: fsspec.AbstractFileSystem | None = None,
    **storage_options: Any,
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, as ``safetensors.torch.load_file`` returns them.

    ``url`` is an origin URL (``s3://...``; ``tiercache::`` is added) or, with ``fs`` (a
    ``TierCacheFileSystem``), a path on it. ``storage_options`` are fsspec's, per protocol
    (``tiercache={"config": ...}``, ``s3={...}``). Tensors are read on the CPU, then moved
    to ``device``.
    """
    if fs is None:
        chained = url if url.startswith("tiercache::") else f"tiercache::{url}"
        fs, path = fsspec.core.url_to_fs(chained, **storage_options)
    else:
        path = url
    with fs.open(path, "rb") as f:
        header, base = _header(f, url)
        tensors: dict[str, torch.Tensor] = {}
        ranges: list[tuple[int, memoryview]] = []
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            tensor, begin = _allocate(url, name, spec)
            tensors[name] = tensor
            if tensor.numel():
                raw = tensor.reshape(-1).view(torch.uint8).numpy()
                ranges.append((base + begin, raw.data.cast("B")))
        if hasattr(f, "read_ranges_into"):
            f.read_ranges_into(ranges)  # every block at once, into the tensors
        else:  # a small file, already in hand as one blob
            for offset, dest in sorted(ranges, key=lambda r: r[0]):
                f.seek(offset)
                if f.readinto(dest) != len(dest):
                    raise ValueError(f"{url}: file ends inside tensor data")
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors


def _header(f: Any, url: str) -> tuple[dict[str, Any], int]:
    """The JSON header and the offset of the tensors' bytes."""
    head = f.read(8)
    if len(head) != 8:
        raise ValueError(f"{url}: not a safetensors file (shorter than 8 bytes)")
    length = int.from_bytes(head, "little")
    if length > _MAX_HEADER:
        raise ValueError(f"{url}: not a safetensors file (header length {length})")
    try:
        header = json.loads(f.read(length))
    except ValueError as exc:
        raise ValueError(f"{url}: not a safetensors file (header: {exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{url}: not a safetensors file (header is not an object)")
    return header, 8 + length


def _allocate(url: str, name: str, spec: Any) -> tuple[torch.Tensor, int]:
    """An empty tensor for one header entry, and where its bytes begin."""
    try:
        dtype = _DTYPES[spec["dtype"]]
        begin, end = (int(x) for x in spec["data_offsets"])
        tensor = torch.empty([int(d) for d in spec["shape"]], dtype=dtype)
    except KeyError as exc:
        raise ValueError(f"{url}: tensor {name!r}: unsupported or missing {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{url}: tensor {name!r}: bad header entry: {exc}") from None
    if end - begin != tensor.numel() * tensor.element_size():
        raise ValueError(
            f"{url}: tensor {name!r}: {end - begin} bytes for shape {list(tensor.shape)} "
            f"of {spec['dtype']}"
        )
    return tensor, begin
