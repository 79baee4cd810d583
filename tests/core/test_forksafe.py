"""A fork waits for LMDB transactions in flight (see tiercache/forksafe.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from tests.conftest import S3, make_config, put_objects
from tiercache import TierCacheFileSystem
from tiercache.forksafe import transaction


def test_fork_waits_for_an_open_transaction() -> None:
    opened, closed_at = threading.Event(), []

    def hold() -> None:
        with transaction():
            opened.set()
            time.sleep(0.3)
            closed_at.append(time.monotonic())

    worker = threading.Thread(target=hold)
    worker.start()
    opened.wait()
    pid = os.fork()
    if pid == 0:  # the child: no transaction of the parent's is open any more
        with transaction():
            pass
        os._exit(0)
    forked_at = time.monotonic()
    worker.join()
    assert os.waitpid(pid, 0)[1] == 0
    assert closed_at and closed_at[0] <= forked_at  # the fork happened only after the close


def test_transactions_run_concurrently_outside_forks() -> None:
    inside = threading.Barrier(3, timeout=5)

    def both() -> None:
        with transaction():
            inside.wait()  # all three are inside at once: no serialisation

    threads = [threading.Thread(target=both) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not inside.broken


def test_a_fork_waits_out_a_write_that_nests_another_transaction(tmp_path: Path) -> None:
    """An index write that demotes a small object opens a second transaction inside the
    first. If that inner one waited for the pending fork, the fork would go ahead (after
    its timeout) with the write open, and the child would hang for good closing the
    environment it inherited (LMDB waits there for the writer thread it does not have)."""
    import lmdb

    env = lmdb.open(str(tmp_path / "x.lmdb"), subdir=False, map_size=1 << 24)
    inside, fork_pending = threading.Event(), threading.Event()

    def write_and_nest() -> None:
        with transaction():
            txn = env.begin(write=True)
            txn.put(b"k", b"v")
            inside.set()
            fork_pending.wait(5)
            time.sleep(0.2)  # the forking thread is waiting for us by now
            with transaction():  # the nested one: must not wait for the fork
                pass
            txn.commit()

    writer = threading.Thread(target=write_and_nest)
    writer.start()
    inside.wait(5)
    fork_pending.set()
    pid = os.fork()
    if pid == 0:
        env.close()  # hangs if the parent's write transaction was copied open
        os._exit(0)
    writer.join()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the child hung closing the environment it inherited")
    env.close()


def test_a_filesystem_made_before_a_fork_gets_its_own_origin_in_the_child(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    """s3fs's event loop stays behind in the parent: the child must not use the parent's
    origin filesystem, even after the child made filesystems of its own (which resets
    fsspec's class-level pid, the check this used to rely on)."""
    import fsspec

    put_objects(s3_server, bucket, {"f/a": b"a" * 100, "f/b": b"b" * 100})
    fs = TierCacheFileSystem(
        config=make_config(cache_dirs), target_protocol="s3", target_options=s3_server.options
    )
    assert fs.cat_file(f"{bucket}/f/a") == b"a" * 100
    parent_origin = fs.origin.fs
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            fsspec.filesystem("memory")  # any filesystem made in the child resets fsspec's pid
            ok = fs.origin.fs is not parent_origin and fs.cat_file(f"{bucket}/f/b") == b"b" * 100
        finally:
            os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert fs.origin.fs is parent_origin
