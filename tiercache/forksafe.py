"""No fork ever copies an LMDB transaction in flight.

A forked child (a DataLoader worker) must close the LMDB environments it inherits before
it can open its own, and closing one aborts the transactions it holds. A transaction that a
parent thread had open at the instant of the fork is copied into the child, and aborting
the copy resets the parent's reader slot in the shared lock file: the parent's read would
no longer be protected from a writer reusing its pages. So every LMDB transaction here runs
inside :func:`transaction`, and a fork waits (briefly) until none is open.
"""

from __future__ import annotations

import os
import threading


class _Gate:
    """Counts open transactions; a fork waits for none to be open and holds new ones off.

    ``with transaction():`` enters the gate itself: a plain class, not a generator-based
    context manager, because it wraps every index look-up and small-object read (two per
    hit), where a generator frame and a re-entrant lock were a tenth of a 4 KiB hit.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._open = 0
        self._forking = False

    def __call__(self) -> _Gate:
        return self

    def __enter__(self) -> None:
        with self._cond:
            while self._forking:
                self._cond.wait()
            self._open += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._open -= 1
            if self._forking and not self._open:
                self._cond.notify_all()

    def before_fork(self) -> None:
        self._cond.acquire()  # held across the fork: no transaction starts meanwhile
        self._forking = True
        # Bounded: a transaction open in the forking thread itself would never close.
        self._cond.wait_for(lambda: self._open == 0, timeout=5.0)

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
