"""The three dataset formats read back exactly what was written, through the cache."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import S3
from tests.torch import helpers
from tests.torch.conftest import TokenData
from tiercache.torch import FileDataset, RecordDataset, TokenDataset, write_shards


def test_token_dataset_reads_exact_sequences(token_data: TokenData,
                                             torch_config: dict[str, Any]) -> None:  # fmt: skip
    ds = TokenDataset(token_data.url, seq_len=helpers.SEQ, storage_options=token_data.options,
                      cache=torch_config)  # fmt: skip
    assert len(ds) == 16 * helpers.SHARD_TOKENS // helpers.SEQ
    assert ds.shard_sizes == [helpers.SHARD_TOKENS // helpers.SEQ] * 16
    for i in (0, 1, 127, 128, 1000, len(ds) - 1, -1):
        got = ds[i]
        assert got.dtype == torch.int64 and got.shape == (helpers.SEQ,)
        want = helpers.expected_sample(token_data.tokens, i % len(ds))
        assert np.array_equal(got.numpy(), want)
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]


def test_token_targets_are_shifted_by_one(token_data: TokenData,
                                          torch_config: dict[str, Any]) -> None:  # fmt: skip
    ds = TokenDataset(token_data.url, seq_len=helpers.SEQ, targets=True,
                      storage_options=token_data.options, cache=torch_config)  # fmt: skip
    # Each shard holds 32768 tokens: (32768 - 1) // 256 = 127 samples with one spare token.
    assert ds.shard_sizes[0] == 127
    x, y = ds[5]
    assert torch.equal(x[1:], y[:-1])
    start = 5 * helpers.SEQ
    assert np.array_equal(y.numpy(), token_data.tokens[start + 1 : start + 1 + helpers.SEQ])


def test_npy_token_files_on_a_local_directory(tmp_path: Path,
                                              torch_config: dict[str, Any]) -> None:  # fmt: skip
    arrays = [np.arange(1000, dtype=np.uint32) + 10_000 * k for k in range(3)]
    for k, arr in enumerate(arrays):
        np.save(tmp_path / f"part-{k}.npy", arr)
    (tmp_path / "notes.txt").write_text("not tokens")
    for cache in (torch_config, False):
        ds = TokenDataset(str(tmp_path), seq_len=100, cache=cache)
        assert ds.shard_sizes == [10, 10, 10]
        assert np.array_equal(ds[12].numpy(), arrays[1][200:300])


def test_record_shards_round_trip(s3_server: S3, bucket: str,
                                  torch_config: dict[str, Any]) -> None:  # fmt: skip
    samples = [json.dumps({"i": i, "pad": "x" * (i % 50)}).encode() for i in range(500)]
    url = f"s3://{bucket}/records"
    manifest = write_shards(samples, url, shard_bytes=4096, storage_options=s3_server.options)
    assert manifest["samples"] == 500 and len(manifest["shards"]) > 5
    ds = RecordDataset(url, storage_options=s3_server.options, cache=torch_config)
    assert len(ds) == 500 and sum(ds.shard_sizes) == 500
    assert [ds[i] for i in range(500)] == samples
    decoded = RecordDataset(url, decode=helpers.decode_json, storage_options=s3_server.options,
                            cache=torch_config)  # fmt: skip
    assert decoded[42] == {"i": 42, "pad": "x" * 42}


def test_record_errors_name_the_problem(s3_server: S3, bucket: str,
                                        torch_config: dict[str, Any]) -> None:  # fmt: skip
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        RecordDataset(f"s3://{bucket}/nothing", storage_options=s3_server.options,
                      cache=torch_config)  # fmt: skip
    with pytest.raises(TypeError, match="bytes-like"):
        write_shards([object()], f"s3://{bucket}/bad", storage_options=s3_server.options)


def test_file_dataset_with_labels(s3_server: S3, bucket: str,
                                  torch_config: dict[str, Any]) -> None:  # fmt: skip
    for cls in ("cat", "dog"):
        for i in range(3):
            s3_server.client.put_object(Bucket=bucket, Key=f"img/{cls}/{i}.jpg",
                                        Body=f"{cls}{i}".encode())  # fmt: skip
    s3_server.client.put_object(Bucket=bucket, Key="img/README", Body=b"skip me")
    ds = FileDataset(f"s3://{bucket}/img", suffixes=[".jpg"], labels=True,
                     storage_options=s3_server.options, cache=torch_config)  # fmt: skip
    assert len(ds) == 6 and ds.classes == ["cat", "dog"]
    assert ds[0] == (b"cat0", 0) and ds[5] == (b"dog2", 1)


def test_datasets_pickle_without_live_handles(token_data: TokenData,
                                              torch_config: dict[str, Any]) -> None:  # fmt: skip
    ds = TokenDataset(token_data.url, seq_len=helpers.SEQ, storage_options=token_data.options,
                      cache=torch_config)  # fmt: skip
    ds[0]  # opens the filesystem and a shard handle in this process
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000, "a pickled dataset should be a description, not data"
    clone = pickle.loads(blob)
    assert clone.source._fs is None and not clone.source._handles
    assert torch.equal(clone[300], ds[300])


def test_missing_token_files_are_a_clear_error(s3_server: S3, bucket: str,
                                               torch_config: dict[str, Any]) -> None:  # fmt: skip
    s3_server.client.put_object(Bucket=bucket, Key="empty/readme.txt", Body=b"x")
    with pytest.raises(FileNotFoundError, match="no token files"):
        TokenDataset(f"s3://{bucket}/empty", seq_len=8, storage_options=s3_server.options,
                     cache=torch_config)  # fmt: skip
