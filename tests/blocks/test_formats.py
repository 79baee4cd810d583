"""Where users read large files from: pyarrow and pandas Parquet, safetensors and torch
checkpoints, HF ``datasets`` over Parquet, all through the tiers with 256 KiB blocks."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from tests.blocks.conftest import BLOCK, MiB, blocks_config, ranged_gets
from tests.conftest import S3, put_objects

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _parquet(row_groups: int = 8, rows: int = 64 * 1024) -> tuple[Any, bytes]:
    """A Parquet file of incompressible int64s, one column, ``row_groups`` of 512 KiB each."""
    import numpy as np

    rng = np.random.default_rng(0)
    table = pa.table({"x": rng.integers(0, 2**62, row_groups * rows, dtype=np.int64)})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=rows, compression="none", use_dictionary=False)
    return table, buf.getvalue()


def _storage_options(config: dict[str, Any], s3: S3) -> dict[str, Any]:
    return {"tiercache": {"config": config, "skip_instance_cache": True}, "s3": s3.options}


def test_one_parquet_row_group_costs_its_blocks_and_the_footer(
    bfs: Any, s3_server: S3, bucket: str
) -> None:
    table, data = _parquet()
    put_objects(s3_server, bucket, {"t.parquet": data})
    url = f"{bucket}/t.parquet"
    s3_server.start_counting()
    with bfs.open(url) as f:
        reader = pq.ParquetFile(f)
        group = reader.read_row_group(5)
        meta = reader.metadata
    assert group.equals(table.slice(5 * 64 * 1024, 64 * 1024))
    column = meta.row_group(5).column(0)
    group_bytes = column.total_compressed_size
    footer = meta.serialized_size + 8
    fetched = bfs.stats()["origin"]["bytes"]
    assert fetched <= group_bytes + footer + 2 * BLOCK, (fetched, group_bytes, footer)
    assert len(data) > 4 * MiB  # far more than what was read
    ranges = ranged_gets(s3_server, "t.parquet")
    assert len(ranges) == fetched // BLOCK + (fetched % BLOCK > 0)


def test_pyarrow_and_pandas_read_parquet_through_the_cache(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    import pandas as pd

    from tiercache import TierCacheFileSystem

    table, data = _parquet(row_groups=6)
    put_objects(s3_server, bucket, {"p/t.parquet": data})
    config = blocks_config(cache_dirs)
    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3_server.options)
    assert pq.read_table(f"{bucket}/p/t.parquet", filesystem=fs).equals(table)
    # The form every pandas takes: a tiercache:// URL, the origin in the storage options.
    options = {"config": config, "target_protocol": "s3", "target_options": s3_server.options}
    frame = pd.read_parquet(f"tiercache://{bucket}/p/t.parquet", storage_options=options)
    assert frame["x"].to_numpy().tolist() == table.column("x").to_pylist()
    # One cache: the pandas read found every block that pyarrow's read had fetched.
    assert fs.stats()["origin"]["bytes"] <= len(data)


def test_pandas_reads_a_chained_url_through_the_cache(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    import pandas as pd

    if int(pd.__version__.split(".")[0]) < 3:
        pytest.skip(
            f"pandas {pd.__version__}: before 3.0, read_parquet rejects a chained URL "
            "('a::b://') with 'storage_options passed with buffer, or non-supported URL'"
        )
    table, data = _parquet(row_groups=2)
    put_objects(s3_server, bucket, {"c/t.parquet": data})
    options = _storage_options(blocks_config(cache_dirs), s3_server)
    frame = pd.read_parquet(f"tiercache::s3://{bucket}/c/t.parquet", storage_options=options)
    assert frame["x"].to_numpy().tolist() == table.column("x").to_pylist()


def test_hf_datasets_loads_parquet_through_the_cache(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, tmp_path: Path
) -> None:
    datasets = pytest.importorskip("datasets")
    table, data = _parquet(row_groups=4)
    put_objects(s3_server, bucket, {"ds/train-0.parquet": data, "ds/train-1.parquet": data})
    config = blocks_config(cache_dirs)
    # datasets reads "a::b" as an archive member a inside b, so a chained URL is not for it;
    # "tiercache://" with the origin in the storage options is.
    options = {"config": config, "target_protocol": "s3", "target_options": s3_server.options}
    ds = datasets.load_dataset(
        "parquet",
        data_files=f"tiercache://{bucket}/ds/*.parquet",
        storage_options={"tiercache": options},
        cache_dir=str(tmp_path / "hf"),
        split="train",
    )
    assert ds.num_rows == 2 * table.num_rows
    assert ds[table.num_rows + 7]["x"] == table.column("x")[7].as_py()


def test_safetensors_and_torch_checkpoints_load_through_the_cache(
    bfs: Any, s3_server: S3, bucket: str
) -> None:
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    from tiercache.torch import load_safetensors

    gen = torch.Generator().manual_seed(0)
    state = {
        "embed.weight": torch.randn(300, 512, generator=gen),
        "layer.0.weight": torch.randn(256, 256, generator=gen).to(torch.bfloat16),
        "layer.0.bias": torch.randn(256, generator=gen).to(torch.float16),
        "step": torch.tensor(7, dtype=torch.int64),
        "mask": torch.rand(1000, generator=gen) > 0.5,
        "empty": torch.zeros(0, 4),
    }
    blob = st.save(state)
    assert len(blob) > 2 * BLOCK
    buf = io.BytesIO()
    torch.save(state, buf)
    put_objects(s3_server, bucket, {"m/model.safetensors": blob, "m/model.pt": buf.getvalue()})
    url = f"{bucket}/m/model.safetensors"

    def same(loaded: dict[str, Any]) -> None:
        assert loaded.keys() == state.keys()
        for name, tensor in state.items():
            assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name

    same(load_safetensors(url, fs=bfs))  # cold: every block fetched once
    assert bfs.stats()["origin"]["bytes"] == len(blob)
    same(load_safetensors(url, fs=bfs))  # warm: from the tiers
    assert bfs.stats()["origin"]["bytes"] == len(blob)
    same(st.load(bfs.cat_file(url)))
    with bfs.open(f"{bucket}/m/model.pt") as f:
        same(torch.load(f, weights_only=True))
    # The chained-URL form, as a user would write it.
    opts = {"tiercache": {"config": bfs.config}, "s3": s3_server.options}
    same(load_safetensors(f"s3://{url}", **opts))


def test_a_damaged_safetensors_header_is_a_clear_error(
    bfs: Any, s3_server: S3, bucket: str
) -> None:
    pytest.importorskip("torch")
    from tiercache.torch import load_safetensors

    bad = (10**12).to_bytes(8, "little") + os.urandom(3 * BLOCK)
    put_objects(s3_server, bucket, {"bad.safetensors": bad})
    with pytest.raises(ValueError, match="bad.safetensors: not a safetensors file"):
        load_safetensors(f"{bucket}/bad.safetensors", fs=bfs)
