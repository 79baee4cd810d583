"""A fork waits for LMDB transactions in flight (see tiercache/forksafe.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

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
