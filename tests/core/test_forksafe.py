"""A fork waits for LMDB transactions in flight (see tiercache/forksafe.py)."""

from __future__ import annotations

import os
import threading
import time

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
