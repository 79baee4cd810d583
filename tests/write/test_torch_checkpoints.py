"""Checkpoints the way PyTorch users write them, through tiercache, into S3 (moto, HTTP)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3
from tests.reliability.faultproxy import Fault, FaultProxy
from tests.write.conftest import keys, object_bytes, write_config

torch = pytest.importorskip("torch")


def _state(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(512, 1024, generator=g),  # 2 MiB
        "layer.bias": torch.randn(1024, generator=g),
        "embed": torch.randn(3000, 768, generator=g),  # 9 MiB: multipart
        "step": torch.tensor(1234),
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_torch_save_and_load_through_tiercache(
    wfs: Any, proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    state = _state(1)
    proxy.add(Fault("hang", times=None, method="PUT"))  # still uploading: read it back here
    with wfs.open(f"{bucket}/run/ckpt.pt", "wb") as f:
        torch.save(state, f)
    with wfs.open(f"{bucket}/run/ckpt.pt", "rb") as f:
        assert _same(torch.load(f, weights_only=True), state)
    proxy.clear()
    assert wfs.sync(timeout=120) == []
    body = object_bytes(s3_server, bucket, "run/ckpt.pt")
    assert body is not None and _same(torch.load(io.BytesIO(body), weights_only=True), state)


def test_safetensors_bytes_through_pipe_file(wfs: Any, s3_server: S3, bucket: str) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = {k: v for k, v in _state(2).items() if k != "step"}
    wfs.pipe_file(f"{bucket}/run/model.safetensors", safetensors_torch.save(state))
    assert _same(safetensors_torch.load(wfs.cat_file(f"{bucket}/run/model.safetensors")), state)
    assert wfs.sync(timeout=120) == []
    body = object_bytes(s3_server, bucket, "run/model.safetensors")
    assert body is not None and _same(safetensors_torch.load(body), state)


@pytest.mark.parametrize("how", ["save", "async_save"])
def test_dcp_save_and_load_with_fsspec_writer_and_reader(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, how: str
) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    config = write_config(cache_dirs)
    url = f"tiercache::s3://{bucket}/dcp"
    options = {"tiercache": {"config": config}, "s3": s3_server.options}
    state = _state(3)
    writer = FsspecWriter(url, sync_files=True, **options)
    if how == "save":
        dcp.save(state, storage_writer=writer, no_dist=True)
    else:
        dcp.async_save(state, storage_writer=writer, no_dist=True).result(timeout=120)

    # Loaded back at once, from the cache: the files may not be in S3 yet.
    loaded = {k: torch.zeros_like(v) for k, v in state.items()}
    dcp.load(loaded, storage_reader=FsspecReader(url, **options), no_dist=True)
    assert _same(loaded, state)

    from tiercache import TierCacheFileSystem

    fs = TierCacheFileSystem(config=config, target_protocol="s3",
                             target_options=s3_server.options)  # fmt: skip
    assert fs.sync(timeout=120) == []
    assert keys(s3_server, bucket, "dcp/") == ["dcp/.metadata", "dcp/__0_0.distcp"]
    # Cold: straight from S3, no tiercache.
    cold = {k: torch.zeros_like(v) for k, v in state.items()}
    reader = FsspecReader(f"s3://{bucket}/dcp", endpoint_url=s3_server.endpoint)
    dcp.load(cold, storage_reader=reader, no_dist=True)
    assert _same(cold, state)
