"""No fork ever copies an LMDB transaction in flight.

A forked child (a DataLoader worker) must close the LMDB environments it inherits before
it can open its own, and closing one aborts the transactions it holds. A transaction that a
parent thread had open at the instant of the fork is copied into the child, and aborting
the copy resets the parent's reader slot in the shared lock file: the parent's read would
no longer be protected from a writer reusing its pages, and closing an environment whose
write transaction was copied open waits forever for the writer thread, which the child does
not have. So every LMDB transaction here runs inside :func:`transaction`, and a fork waits
until none is open in another thread.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("tiercache.forksafe")


class _Gate:
    """Counts open transactions; a fork waits for none to be open and holds new ones off.

    ``with transaction():`` enters the gate itself: a plain class, not a generator-based
    context manager, because it wraps every index look-up and small-object read (two per
    hit), where a generator frame and a re-entrant lock were a tenth of a 4 KiB hit.

    A thread that already has a transaction open enters again without waiting (an index
    write that demotes a small object reads and writes the small-object store inside it).
    Waiting there would hold the fork off until its timeout, and the fork would then copy
    an open write transaction: LMDB in the child waits forever, on closing the inherited
    environment, for the writer thread the child does not have.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._open = 0
        self._forking = False
        self._depth = threading.local()  # this thread's open transactions

    def __call__(self) -> _Gate:
        return self

    def __enter__(self) -> None:
        depth = getattr(self._depth, "n", 0)
        with self._cond:
            while self._forking and not depth:
                self._cond.wait()
            self._open += 1
        self._depth.n = depth + 1

    def __exit__(self, *exc: object) -> None:
        self._depth.n -= 1
        with self._cond:
            self._open -= 1
            if self._forking:
                self._cond.notify_all()

    def before_fork(self) -> None:
        self._cond.acquire()  # held across the fork: no transaction starts meanwhile
        self._forking = True
        # A transaction open in the forking thread itself cannot close meanwhile.
        own = getattr(self._depth, "n", 0)
        if not self._cond.wait_for(lambda: self._open <= own, timeout=60.0):
            log.warning("forking with %d LMDB transactions open in other threads", self._open)

    def after_fork_in_parent(self) -> None:
        self._forking = False
        self._cond.notify_all()
        self._cond.release()

    def after_fork_in_child(self) -> None:
        self.__init__()  # type: ignore[misc]  # fresh state; the parent's threads are gone


_GATE = _Gate()
transaction = _GATE  # `with transaction():`
os.register_at_fork(
    before=_GATE.before_fork,
    after_in_parent=_GATE.after_fork_in_parent,
    after_in_child=_GATE.after_fork_in_child,
)
