"""The per-process mapping cache (``TierStore.mapped``) under threads and large blobs.

Two bugs lived here: a blob larger than the cache's byte budget was released by the very
call that mapped it (every object over 1 GiB failed with "operation forbidden on released
memoryview"), and ``mapped`` read and reordered the cache without its lock while another
thread's ``_remember`` released the view it was about to return (the FUSE mount reads with
16 threads). Both are provoked here at small sizes by shrinking the cache's budgets.
"""

from __future__ import annotations

import os
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tiercache.config import TierConfig
from tiercache.tiers import store as store_module
from tiercache.tiers.store import BlobMeta, TierStore

KiB = 1 << 10


@pytest.fixture
def shm_store(tmp_path: Path) -> Iterator[TierStore]:
    root = Path("/dev/shm") / f"tiercache-maps-{os.getpid()}-{tmp_path.name}"
    store = TierStore(TierConfig("ram", root, 1 << 30, verify="on-change"))
    yield store
    store.close()
    import shutil

    shutil.rmtree(root, ignore_errors=True)


def _put(store: TierStore, blob_id: str, body: bytes) -> BlobMeta:
    return store.put_encoded(blob_id, body, False, len(body))


def test_a_blob_larger_than_the_mapping_budget_reads_whole(
    shm_store: TierStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The >1 GiB bug at 256 KiB: the one mapping over budget must still be readable."""
    monkeypatch.setattr(store_module, "_MAP_BYTES", 128 * KiB)
    body = os.urandom(256 * KiB)
    meta = _put(shm_store, "ab" * 16, body)
    view = shm_store.mapped("ab" * 16, meta)
    assert bytes(view) == body
    again = shm_store.mapped("ab" * 16, meta)  # and again, from a fresh mapping or the cache
    assert bytes(again[1000:2000]) == body[1000:2000]


def test_threads_never_get_a_released_or_wrong_view(
    shm_store: TierStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 threads (as the FUSE mount runs) map and read 24 blobs through a cache that holds
    only 3, so mappings are dropped all the time while other threads read them."""
    monkeypatch.setattr(store_module, "_MAP_COUNT", 3)
    monkeypatch.setattr(store_module, "_SWEEP_SECONDS", 0.0)
    blobs = {}
    for i in range(24):
        body = os.urandom(96 * KiB)
        blob_id = f"{i:032x}"
        blobs[blob_id] = (_put(shm_store, blob_id, body), zlib.crc32(body))
    ids = list(blobs)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        n = seed
        try:
            for _ in range(400):
                if stop.is_set():
                    return
                n = (n * 1103515245 + 12345) % (1 << 31)
                blob_id = ids[n % len(ids)]
                meta, crc = blobs[blob_id]
                view = shm_store.mapped(blob_id, meta)
                # Read it twice, as a caller would (a file's read after its open).
                if zlib.crc32(view) != crc or zlib.crc32(bytes(view[: 48 * KiB])) != zlib.crc32(
                    view[: 48 * KiB]
                ):
                    raise AssertionError(f"wrong bytes from {blob_id}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            stop.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show at once
    try:
        threads = [threading.Thread(target=reader, args=(s,)) for s in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, f"{len(errors)} reader(s) failed, first: {errors[0]!r}"
