"""The node's engine as a service: the marker that tells clients one runs.

Without a service, the engine is elected inside whichever process first needs it (see
``Cache._elect``). ``tiercache engine`` runs it as a daemon instead, and it must stay the
engine while it runs: a client that finds the engine's socket silent for a moment (the
service restarting, a takeover in progress) must wait for it, not elect itself and keep the
lock the service needs.

So the service writes ``engine.service`` beside the lock, naming its process. Clients that
see it name a live process never take the lock; they wait for the socket to answer. A
service that stops cleanly removes it; one that was killed leaves it behind, naming a dead
process, and clients go back to electing an engine among themselves. A service that starts
while an embedded engine holds the lock asks it to hand over (``handover`` on the socket).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

MARKER = "engine.service"


class ServiceRunning(OSError):
    """Another engine service already runs for this cache directory."""


def marker_path(index_path: Path) -> Path:
    return index_path / MARKER


def write_marker(index_path: Path) -> None:
    """Say that this process is the node's engine service (atomically)."""
    path = marker_path(index_path)
    tmp = path.with_name(f".{MARKER}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "started": time.time()}, f)
    os.replace(tmp, path)


def remove_marker(index_path: Path) -> None:
    """Withdraw the marker, if it is still ours (a newer service may have replaced it)."""
    if service_pid(index_path) == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            marker_path(index_path).unlink()


def service_pid(index_path: Path) -> int | None:
    """The pid the marker names, or None when there is no readable marker."""
    try:
        data = json.loads(marker_path(index_path).read_text())
        return int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_service(index_path: Path) -> int | None:
    """The pid of a live engine service for this cache other than this process, if any."""
    pid = service_pid(index_path)
    if pid is None or pid == os.getpid() or not pid_alive(pid):
        return None
    return pid


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (in this pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
