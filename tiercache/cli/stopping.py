"""How foreground commands (the engine service, the metrics server) stop: SIGTERM (systemd,
Kubernetes, a test) and Ctrl-C alike end the wait, and the command then shuts down cleanly."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop:
    """Set by a stop signal while the ``with`` block of :func:`stop_signals` runs."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self) -> None:
        """Until a stop signal comes. With a timeout: the kernel may deliver the signal to
        another thread, which only sets a flag the main thread checks between bytecodes,
        and a wait with no timeout never returns to check it (the service then ignored
        SIGTERM, now and then)."""
        while not self._event.wait(0.5):
            pass


@contextlib.contextmanager
def stop_signals() -> Iterator[Stop]:
    """Stop signals set the yielded :class:`Stop`; the previous handlers come back after."""
    stop = Stop()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
