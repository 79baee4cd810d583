"""The uploader: the engine's component that carries the write journal to the origin.

It runs wherever the engine runs (embedded in a training process or ``tiercache engine``)
and only there, so exactly one process per node uploads. It never holds the engine lock
while it talks to the origin and never talks to the origin inside a journal transaction.

One scheduler thread reads the journal (every second, and whenever a writer says there is
work), decides with ``order.plan`` what may happen now, and hands requests to two pools:

* parts: ``UploadPart`` of every multipart upload, ``upload_concurrency`` at a time, in
  program order across files (s3fs sends one part after another; here a checkpoint's parts
  and its siblings' go together);
* steps: creating or resuming a multipart upload (``ListParts``: after any crash or restart
  only the parts the origin lacks are sent), completing it, whole-object puts, deletes,
  copies, cancelling superseded uploads, releasing verified ones.

Every part is journaled (ETag, CRC32) as the origin acknowledges it. After the visible step
the object is verified (``targets``); only then is its staged file released: it becomes an
ordinary cache entry in the slowest tier (linked, not copied) and the journal forgets it.

Failures: network errors, throttling and server errors are retried with exponential backoff
and jitter (up to a minute apart); an upload the origin lost is started afresh; a refusal
no retry will change (403, a missing bucket) marks the operation ``failed``: it is logged,
counted, shown by ``stats()``, metrics and ``tiercache uploads``, retried every five minutes
and whenever an engine starts, and its staged data is kept.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..ipc import load_origin
from .journal import COPY, DELETE, DURABLE, FAILED, PENDING, PUT, Journal, Op
from .order import plan
from .settings import MAX_PARTS
from .staging import Staging
from .targets import (
    Part,
    PartInfo,
    Target,
    VerifyError,
    classify,
    error_code,
    file_crc,
    target_for,
)

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("tiercache.write")

#: How long an operation the origin refused for good waits before it is tried again.
FAILED_RETRY_SECONDS = 300.0
_MAX_BACKOFF = 60.0
_MAINTAIN_SECONDS = 60.0
#: Tries of an abort before it is left to the next maintenance pass.
_ABORT_ATTEMPTS = 6
#: Parts of one file sent at once while it is still being written.
_EARLY_STREAMS = 2
#: How much less CPU priority upload threads ask for than the writers they serve.
_NICENESS = 10


class StagedCorrupt(OSError):
    """The staged copy no longer matches the checksum it was acknowledged with."""


@dataclass
class Multipart:
    """A multipart upload in progress: the origin's upload and the parts it holds."""

    upload: dict[str, Any]
    count: int
    part_size: int
    done: dict[int, Part] = field(default_factory=dict)
    sending: set[int] = field(default_factory=set)


@dataclass
class Early:
    """A large file still being written: its whole parts go to the origin already.

    The writer says how much it has written each time another part is complete (a hint,
    one way); when it closes the file, its journal entry takes this upload over if the file
    was written front to back (``Op.early``), or has it aborted otherwise."""

    token: str
    key: str
    path: str
    origin: str
    written: int = 0
    mp: Multipart | None = None
    creating: bool = False
    retry_at: float = 0.0
    attempts: int = 0


class Uploader:
    """Uploads one write tier's journal (see the module docstring)."""

    def __init__(self, engine: Engine, staging: Staging) -> None:
        self.engine = engine
        self.staging = staging
        self.config = staging.config
        self.counters = engine.counters
        self.timeout = engine.config.origin.timeout_seconds
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._targets: dict[str, Target] = {}
        self._busy: dict[int, str] = {}  # seq -> the step under way: "prepare", "final", ...
        self._mpu: dict[int, Multipart] = {}
        self._retry_at: dict[int, float] = {}
        self._attempts: dict[int, int] = {}
        self._started: dict[int, float] = {}
        self._reported: set[int] = set()
        self._parts_inflight = 0
        self._early: dict[str, Early] = {}  # staged file -> its upload while being written
        self._seen_seq = 0  # operations up to this one have had their keys' entries dropped
        self._abandoned: set[str] = set()
        n = self.config.upload_concurrency
        self._steps = ThreadPoolExecutor(
            max_workers=n, thread_name_prefix="tiercache-upload", initializer=_background
        )
        self._parts = ThreadPoolExecutor(
            max_workers=n, thread_name_prefix="tiercache-part", initializer=_background
        )
        self._maintained = 0.0
        self._thread = threading.Thread(target=self._run, name="tiercache-uploads", daemon=True)
        self._thread.start()

    @property
    def journal(self) -> Journal:
        return self.staging.journal

    def _idle(self) -> bool:
        """Nothing was ever written to this write tier (no journal): nothing to do."""
        return self.staging.existing_journal() is None

    # -- control ----------------------------------------------------------------------------------
    def wake(self) -> None:
        """There may be new work (a writer closed a file, renamed, deleted)."""
        self._wake.set()

    def early(self, token: str, key: str, path: str, origin: str, written: int) -> None:
        """A writer has ``written`` bytes of a file still open: send its whole parts."""
        with self._lock:
            if token in self._abandoned:
                return
            job = self._early.get(token)
            if job is None:
                job = self._early[token] = Early(token, key, path, origin)
            job.written = max(job.written, int(written))
        self.wake()

    def abandon(self, token: str) -> None:
        """The writer discarded the file, or rewrote what was sent: abort that upload."""
        with self._lock:
            self._early.pop(token, None)
            self._abandoned.add(token)
        self._steps.submit(self._abort_early, token)

    def pending_seq(self, key: str) -> int | None:
        """The sequence number of the latest pending operation on ``key`` (None: none)."""
        if self._idle():
            return None
        seen = self.journal.latest(key)
        return None if seen is None else seen.op.seq

    def retry_failed(self) -> int:
        """Try every failed operation again now (``tiercache uploads --retry``)."""
        if self._idle():
            return 0
        failed = [op for op in self.journal.pending() if op.state == FAILED]
        with self.journal.write() as w:
            for op in failed:
                op.state = PENDING
                w.update(op)
        with self._lock:
            for op in failed:
                self._retry_at.pop(op.seq, None)
                self._reported.discard(op.seq)
        self.wake()
        return len(failed)

    def close(self, timeout: float = 10.0) -> None:
        """Stop: no new requests; those in flight may finish (their results are journaled
        only while running; the next engine resumes from the journal and the origin)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=timeout)
        self._steps.shutdown(wait=False, cancel_futures=True)
        self._parts.shutdown(wait=False, cancel_futures=True)

    def wait_idle(self, timeout: float, progress: bool = False) -> list[Op]:
        """Wait until nothing but failed operations is pending, or ``timeout``; returns
        what is left."""
        deadline = time.monotonic() + timeout
        bar: Any = None
        last = 0
        try:
            while True:
                if self._idle():
                    return []
                left = [op for op in self.journal.pending() if op.state != FAILED]
                if not left or time.monotonic() >= deadline:
                    return left
                now_left = sum(op.size for op in left if op.kind == PUT)
                if progress and bar is None:
                    from tqdm import tqdm

                    bar = tqdm(
                        total=now_left, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=f"tiercache: uploading {len(left)} staged write(s)",
                    )  # fmt: skip
                    last = now_left
                if bar is not None:
                    bar.update(max(0, last - now_left))
                    last = now_left
                self.wake()
                time.sleep(0.05)
        finally:
            if bar is not None:
                bar.close()

    # -- the scheduler ----------------------------------------------------------------------------
    def _run(self) -> None:
        self._steps.submit(self._maintain)
        while not self._stop.is_set():
            self._wake.clear()
            try:
                delay = self._cycle()
            except Exception:
                log.exception("upload scheduling failed; trying again")
                delay = 1.0
            self._wake.wait(delay)

    def _cycle(self) -> float:
        if self._idle():
            return 1.0
        ops = self.journal.pending()
        now = time.monotonic()
        if now - self._maintained > _MAINTAIN_SECONDS:
            self._maintained = now
            self._steps.submit(self._maintain)
        with self._lock:
            publishing = {s for s, phase in self._busy.items() if phase in ("final", "release")}
        decisions = plan(ops, publishing)
        self._shadow_new(ops)
        delay = 1.0
        for op in ops:
            if self._stop.is_set():
                break
            decision = decisions[op.seq]
            with self._lock:
                busy = self._busy.get(op.seq)
                due = self._retry_at.get(op.seq, 0.0)
            if busy is not None:
                continue
            if due > now:
                delay = min(delay, due - now)
                continue
            if decision.superseded:
                if busy is None and not self._sending(op):
                    self._step(op, "cancel", self._cancel)
                continue
            if op.state == DURABLE:
                self._step(op, "release", self._release)
                continue
            if op.kind == PUT and op.size > self._part_size(op.size):
                self._multipart(op, decision.may_publish, busy)
                continue
            if busy is None and decision.may_publish:
                work = {PUT: self._put, DELETE: self._delete, COPY: self._copy}[op.kind]
                self._step(op, "final", work)
        self._early_cycle({op.token for op in ops if op.token}, now)
        return max(0.01, delay)

    def _shadow_new(self, ops: list[Op]) -> None:
        """Drop cached entries of keys with operations this engine has not seen yet. The
        writer did so when it acknowledged them; this covers one killed in between."""
        new = [op for op in ops if op.seq > self._seen_seq]
        for op in new:
            with contextlib.suppress(Exception):
                self.engine.invalidate(op.key)
        if new:
            self._seen_seq = max(op.seq for op in new)

    def _early_cycle(self, closed: set[str], now: float) -> None:
        """Parts of files still being written, with what part budget closed files left."""
        with self._lock:
            jobs = [j for j in self._early.values() if j.token not in closed]
        for job in jobs:
            if job.retry_at > now or self._stop.is_set():
                continue
            with self._lock:
                if job.mp is None:
                    if not job.creating:
                        job.creating = True
                        self._steps.submit(self._early_create, job)
                    continue
                mp = job.mp
                # A file still being written gets few streams: its writer should not
                # wait for CPU behind its own upload (all of them once it is closed).
                free = min(
                    self.config.upload_concurrency - self._parts_inflight,
                    _EARLY_STREAMS - len(mp.sending),
                )
                ready = job.written // mp.part_size
                missing = [
                    n for n in range(1, ready + 1) if n not in mp.done and n not in mp.sending
                ]
                for n in missing[: max(0, free)]:
                    mp.sending.add(n)
                    self._parts_inflight += 1
                    self._parts.submit(self._send_part, job, mp, n)

    def _multipart(self, op: Op, may_publish: bool, busy: str | None) -> None:
        with self._lock:
            mp = self._mpu.get(op.seq)
        if mp is None:
            if busy is None:
                self._step(op, "prepare", self._prepare)
            return
        with self._lock:
            free = self.config.upload_concurrency - self._parts_inflight
            missing = [
                n for n in range(1, mp.count + 1) if n not in mp.done and n not in mp.sending
            ]
            for n in missing[: max(0, free)]:
                mp.sending.add(n)
                self._parts_inflight += 1
                self._parts.submit(self._send_part, op, mp, n)
            complete = len(mp.done) == mp.count and not mp.sending
        if complete and may_publish and self._busy.get(op.seq) is None:
            self._step(op, "final", self._complete)

    def _sending(self, op: Op) -> bool:
        """Whether parts of ``op``'s upload are on their way (sent for it or, while its
        file was written, ahead of it)."""
        with self._lock:
            mp = self._mpu.get(op.seq)
            return mp is not None and bool(mp.sending)

    def _step(self, op: Op, phase: str, work: Callable[[Op], None]) -> None:
        with self._lock:
            self._busy[op.seq] = phase
            self._started.setdefault(op.seq, time.monotonic())
        self._steps.submit(self._guarded, op, phase, work)

    def _guarded(self, op: Op, phase: str, work: Callable[[Op], None]) -> None:
        try:
            if not self._stop.is_set():
                work(op)
                with self._lock:
                    self._attempts.pop(op.seq, None)
        except Exception as exc:
            self._failed(op, exc)
        finally:
            with self._lock:
                if self._busy.get(op.seq) == phase:
                    del self._busy[op.seq]
            self._wake.set()

    # -- failures ---------------------------------------------------------------------------------
    def _failed(self, op: Op, exc: BaseException) -> None:
        if self._stop.is_set():
            return
        kind = classify(exc)
        if isinstance(exc, StagedCorrupt):
            kind = "permanent"
        what = f"{op.kind} {op.key}"
        code = error_code(exc)
        message = f"{type(exc).__name__}: {exc}" + (f" (S3 error {code})" if code else "")
        now = time.monotonic()
        with self._lock:
            attempts = self._attempts[op.seq] = self._attempts.get(op.seq, 0) + 1
        if kind in ("gone", "restart"):
            # Start that upload afresh: the origin lost it, or holds something else.
            log.warning("%s: %s; starting its upload again", what, message)
            self._forget_upload(op)
            self.counters.add("upload_retries")
            with self._lock:
                self._retry_at[op.seq] = now + (0.0 if kind == "gone" else _backoff(attempts))
            return
        op.attempts += 1
        op.error = message[:500]
        if kind == "permanent":
            op.state = FAILED
            self.counters.add("upload_failures")
            if op.seq not in self._reported:
                self._reported.add(op.seq)
                log.error(
                    "%s failed for good: %s; the staged copy is kept and retried every %d s "
                    "(`tiercache uploads` lists it, `tiercache uploads --retry` tries now)",
                    what, message, FAILED_RETRY_SECONDS,
                )  # fmt: skip
            with self._lock:
                self._retry_at[op.seq] = now + FAILED_RETRY_SECONDS
        else:
            self.counters.add("upload_retries")
            if attempts == 1 or attempts % 10 == 0:
                log.warning("%s: attempt %d failed (%s); retrying", what, attempts, message)
            with self._lock:
                self._retry_at[op.seq] = now + _backoff(attempts)
        with contextlib.suppress(Exception), self.journal.write() as w:
            current = w.get(op.seq)
            if current is not None:
                current.attempts, current.error = op.attempts, op.error
                if op.state == FAILED:
                    current.state = FAILED
                w.update(current)

    def _forget_upload(self, op: Op) -> None:
        with self._lock:
            self._mpu.pop(op.seq, None)
        if op.token:
            with self.journal.write() as w:
                w.drop_upload(op.token)

    # -- targets ----------------------------------------------------------------------------------
    def _target(self, op: Op | Early) -> Target:
        target = self._targets.get(op.origin)
        if target is None:
            pickled = self.journal.origin_pickle(op.origin)
            if pickled is None:
                raise PermissionError(f"the journal has no origin filesystem for {op.key}")
            target = self._targets[op.origin] = target_for(load_origin(pickled), self.timeout)
        return target

    def _part_size(self, size: int) -> int:
        part = self.config.part_size
        while math.ceil(size / part) > MAX_PARTS:
            part *= 2
        return part

    # -- the steps --------------------------------------------------------------------------------
    def _prepare(self, op: Op) -> None:
        """Create the multipart upload, or resume the one the journal names from the parts
        the origin holds (ListParts): only the missing parts will be sent."""
        target = self._target(op)
        if not target.multipart:
            with self._lock:  # an origin without multipart uploads: one whole put
                self._mpu[op.seq] = Multipart({"whole": True}, 0, op.size)
            return
        with self._lock:
            job = self._early.get(op.token)
            if job is not None and job.creating:
                self._retry_at[op.seq] = time.monotonic() + 0.05  # its upload is being made
                return
            self._early.pop(op.token, None)
        if (
            job is not None
            and job.mp is not None
            and op.early
            and job.mp.upload.get("key") == op.key
        ):
            count = math.ceil(op.size / job.mp.part_size)
            if count <= MAX_PARTS:  # the parts sent while it was written stay
                job.mp.count = count
                with self._lock:
                    self._mpu[op.seq] = job.mp
                return
        upload = self.journal.upload(op.token)
        if upload is not None and (
            (upload.get("early") and not op.early)
            or math.ceil(op.size / int(upload["part_size"])) > MAX_PARTS
        ):
            # Sent while the file was written, then rewritten (or grown past the parts
            # limit): none of it can be kept.
            target.abort(op.path, upload["upload_id"])
            with self.journal.write() as w:
                w.drop_upload(op.token)
            upload = None
        remote: dict[int, Any] | None = {}
        if upload is not None and upload.get("key") == op.key:
            try:
                remote = target.list_parts(op.path, upload["upload_id"])
            except Exception as exc:
                if error_code(exc) in ("MethodNotAllowed", "NotImplemented"):
                    remote = None  # a server without ListParts: the journal's word it is
                elif classify(exc) != "gone":
                    raise
                else:
                    upload = None
        else:
            upload = None
        if upload is None:
            part_size = self._part_size(op.size)
            upload = {**target.create(op.path), "part_size": part_size, "key": op.key}
            with self.journal.write() as w:
                w.drop_upload(op.token)
                w.set_upload(op.token, upload)
        part_size = int(upload["part_size"])
        count = math.ceil(op.size / part_size)
        mp = Multipart(upload, count, part_size)
        recorded = self.journal.parts_of(op.token)
        path = self.staging.data_path(op.token)
        adopted: dict[int, dict[str, Any]] = {}
        if remote is None:
            remote = {
                n: PartInfo(rec["etag"], int(rec["size"]), None) for n, rec in recorded.items()
            }
        for n, part in remote.items():
            if n > count or part.size != _part_length(n, count, part_size, op.size):
                continue
            mine = recorded.get(n)
            if mine is not None and mine.get("etag") == part.etag:
                mp.done[n] = Part(n, part.etag, int(mine["crc32"]), mine.get("md5"))
                continue
            if part.crc32 is None:
                continue  # cannot prove it holds our bytes: send it again
            crc = file_crc(path, (n - 1) * part_size, part.size)
            if crc == part.crc32:  # sent before a crash, acknowledged, not yet journaled
                mp.done[n] = Part(n, part.etag, crc)
                adopted[n] = {"etag": part.etag, "crc32": crc, "size": part.size}
        if adopted:
            with self.journal.write() as w:
                for n, info in adopted.items():
                    w.record_part(op.token, n, info)
        if remote:
            log.info(
                "resuming the upload of %s: %d of %d parts already at the origin",
                op.key, len(mp.done), count,
            )  # fmt: skip
        with self._lock:
            self._mpu[op.seq] = mp

    def _send_part(self, owner: Op | Early, mp: Multipart, n: int) -> None:
        """Send part ``n`` of ``owner``'s staged file (closed, or still being written) and
        journal its ETag and CRC32 once the origin has it."""
        try:
            if self._stop.is_set():
                return
            if isinstance(owner, Op):
                length = _part_length(n, mp.count, mp.part_size, owner.size)
            else:
                length = mp.part_size
            fd = self._open_staged(owner)
            try:
                data = os.pread(fd, length, (n - 1) * mp.part_size)
            finally:
                os.close(fd)
            if len(data) != length:
                raise StagedCorrupt(f"staged file of {owner.key} is shorter than acknowledged")
            crc = zlib.crc32(data)
            target = self._target(owner)
            part = target.upload_part(
                owner.path, mp.upload["upload_id"], n, data, crc, bool(mp.upload.get("checksums"))
            )
            del data
            if self._stop.is_set():
                return
            current = self.journal.upload(owner.token)
            if current is None or current.get("upload_id") != mp.upload.get("upload_id"):
                return  # that upload was abandoned meanwhile
            record = {"etag": part.etag, "crc32": crc, "size": length}
            if part.md5 is not None:
                record["md5"] = part.md5
            with self.journal.write() as w:
                w.record_part(owner.token, n, record)
            with self._lock:
                mp.done[n] = part
            self.counters.add("upload_part_bytes", length)
        except Exception as exc:
            if isinstance(owner, Op):
                self._failed(owner, exc)
            else:
                self._early_failed(owner, exc)
        finally:
            with self._lock:
                mp.sending.discard(n)
                self._parts_inflight -= 1
            self._wake.set()

    # -- parts of files still being written ------------------------------------------------------
    def _early_create(self, job: Early) -> None:
        """Start (or, after an engine restart, take up again) the upload of an open file."""
        try:
            upload = self.journal.upload(job.token)
            if upload is not None and upload.get("key") == job.key and upload.get("early"):
                mp = Multipart(upload, 0, int(upload["part_size"]))
                for n, rec in self.journal.parts_of(job.token).items():
                    mp.done[n] = Part(n, rec["etag"], int(rec["crc32"]), rec.get("md5"))
            else:
                target = self._target(job)
                part_size = self.config.part_size
                upload = {
                    **target.create(job.path), "part_size": part_size, "key": job.key,
                    "path": job.path, "origin": job.origin, "early": True,
                }  # fmt: skip
                with self._lock:
                    alive = self._early.get(job.token) is job
                if not alive:  # closed (and taken over) or abandoned meanwhile
                    target.abort(job.path, upload["upload_id"])
                    return
                with self.journal.write() as w:
                    w.drop_upload(job.token)
                    w.set_upload(job.token, upload)
                mp = Multipart(upload, 0, part_size)
            with self._lock:
                job.mp = mp
        except Exception as exc:
            self._early_failed(job, exc)
        finally:
            with self._lock:
                job.creating = False
            self._wake.set()

    def _early_failed(self, job: Early, exc: BaseException) -> None:
        """Parts of an open file are an optimisation: failures only slow them down (the
        file's journal entry retries and reports, once it is closed)."""
        job.attempts += 1
        job.retry_at = time.monotonic() + _backoff(job.attempts)
        if classify(exc) in ("gone", "restart"):
            with self._lock:
                job.mp = None
            with contextlib.suppress(Exception), self.journal.write() as w:
                w.drop_upload(job.token)
        log.debug("early part of %s failed (%s); trying again", job.key, exc)

    def _abort_early(self, token: str) -> None:
        """Abort the upload of an open file that was discarded or rewritten."""
        upload = self.journal.upload(token)
        if upload is None or not upload.get("early"):
            return
        if any(op.token == token and op.early for op in self.journal.pending()):
            return  # closed meanwhile, front to back after all: its entry keeps it
        target = self._target(Early(token, upload["key"], upload["path"], upload["origin"]))
        for attempt in range(1, _ABORT_ATTEMPTS + 1):
            try:
                target.abort(upload["path"], upload["upload_id"])  # an upload gone counts
                break
            except Exception as exc:
                # Forgetting an upload the origin still holds would leave its parts stored
                # (and billed) for good: keep it in the journal, the next maintenance pass
                # aborts it again. (moto answers 500 to an abort that races a part.)
                if attempt == _ABORT_ATTEMPTS:
                    log.warning(
                        "could not abort the upload of %s (%s); trying again within %.0f s",
                        upload["key"], exc, _MAINTAIN_SECONDS,
                    )  # fmt: skip
                    return
                time.sleep(_backoff(attempt))
        with self.journal.write() as w:
            if w.upload(token) == upload:
                w.drop_upload(token)

    def _reap_early(self) -> None:
        """Uploads of files whose writer died before closing them: abort and forget."""
        pending = {op.token for op in self.journal.pending() if op.token}
        for token, upload in self.journal.all_uploads().items():
            if token in pending or not upload.get("early"):
                continue
            if self.staging.held_by_writer(token):
                continue
            if token in {op.token for op in self.journal.pending() if op.token}:
                continue  # committed just before its writer let go
            with self._lock:
                self._early.pop(token, None)
            log.info("aborting the upload of %s: its writer died before closing it", upload["key"])
            self._abort_early(token)

    def _complete(self, op: Op) -> None:
        with self._lock:
            mp = self._mpu[op.seq]
        if mp.upload.get("whole"):
            self._put(op)
            return
        parts = [mp.done[n] for n in range(1, mp.count + 1)]
        try:
            local = self.staging.data_path(op.token)
            version = self._target(op).complete(op.path, mp.upload, parts, op.size, op.crc32, local)
        except VerifyError:
            self._check_staged(op)
            raise
        self._durable(op, version)

    def _open_staged(self, op: Op | Early) -> int:
        paths = [self.staging.data_path(op.token)]
        if isinstance(op, Early):  # still being written: in open/ (or just published)
            paths.insert(0, self.staging.open_path(op.token))
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                return os.open(path, os.O_RDONLY)
        raise StagedCorrupt(f"the staged copy of {op.key} ({paths[-1]}) is missing")

    def _put(self, op: Op) -> None:
        path = self.staging.data_path(op.token)
        os.close(self._open_staged(op))
        try:
            version = self._target(op).put(op.path, path, op.size, op.crc32)
        except VerifyError:
            self._check_staged(op)
            raise
        self.counters.add("upload_part_bytes", op.size)
        self._durable(op, version)

    def _check_staged(self, op: Op) -> None:
        path = self.staging.data_path(op.token)
        if not path.exists() or path.stat().st_size != op.size or file_crc(path) != op.crc32:
            raise StagedCorrupt(
                f"the staged copy of {op.key} ({path}) no longer matches the CRC32 it was "
                "written with: the local disk damaged it before it could be uploaded"
            )

    def _delete(self, op: Op) -> None:
        self._target(op).delete(op.path)
        self._finish(op, {"size": 0})

    def _copy(self, op: Op) -> None:
        version = self._target(op).copy(op.src, op.path)
        self._finish(op, {"size": op.size, "version": version})

    def _durable(self, op: Op, version: str) -> None:
        """Verified at the origin: say so in the journal, count it, release the staged copy."""
        op.state, op.version, op.error = DURABLE, version, ""
        with self.journal.write() as w:
            w.update(op)
        self.counters.add("uploads")
        self.counters.add("uploaded_bytes", op.size)
        with self._lock:
            started = self._started.get(op.seq)
        if started is not None:
            self.counters.observe_upload_seconds(time.monotonic() - started)
        self._release(op)

    def _release(self, op: Op) -> None:
        """A durable put becomes an ordinary cache entry (unless a later write to its key
        is pending) and leaves the journal; its staged file goes."""
        if self._stop.is_set():
            return
        latest = self.journal.latest(op.key)
        if latest is not None and latest.op.seq == op.seq:
            try:
                self.engine.adopt(
                    op.key, self.staging.data_path(op.token), op.size, op.crc32, op.version,
                    op.seq,
                )  # fmt: skip
            except Exception as exc:
                log.warning("%s is uploaded but could not be cached: %s", op.key, exc)
                with contextlib.suppress(Exception):
                    self.engine.invalidate(op.key)
        self._finish(op, {"size": op.size, "version": op.version}, invalidate=False)

    def _finish(self, op: Op, done: dict[str, Any], invalidate: bool = True) -> None:
        if self._stop.is_set():
            return
        if invalidate:  # what the cache held under this key is not what the origin holds
            self.engine.invalidate(op.key)
        self._drop(op, done)
        if op.kind != PUT:
            self.counters.add("uploads")

    def _drop(self, op: Op, done: dict[str, Any] | None) -> None:
        """``op`` leaves the journal (``done``: what it left at the origin), its staged file
        and this uploader's state for it go."""
        with self.journal.write() as w:
            w.remove(op, done=done)
        if op.token:
            self.staging.release(op.token)
        with self._lock:
            self._mpu.pop(op.seq, None)
            self._retry_at.pop(op.seq, None)
            self._started.pop(op.seq, None)

    def _cancel(self, op: Op) -> None:
        """A later operation on the same key made this one moot: abort its multipart
        upload, if any, and drop it."""
        if op.token:
            upload = self.journal.upload(op.token)
            if upload is not None and "upload_id" in upload:
                self._target(op).abort(op.path, upload["upload_id"])
        self._drop(op, None)

    def _maintain(self) -> None:
        """Now and then: forget old completions, sweep staged files nobody refers to."""
        if self._idle():
            return
        try:
            with self.journal.write() as w:
                w.prune_done()
            self._reap_early()
            self.staging.sweep()
        except Exception:
            log.exception("write tier maintenance failed")


def _background() -> None:
    """Upload threads run at a lower CPU priority than the process's other threads (Linux
    lets a thread lower its own): a checkpoint's writer, or training, comes first; the
    network, not the CPU, paces uploads."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + _NICENESS)


def _part_length(n: int, count: int, part_size: int, size: int) -> int:
    return part_size if n < count else size - part_size * (count - 1)


def _backoff(attempts: int) -> float:
    return min(_MAX_BACKOFF, 0.25 * 2 ** min(attempts, 10)) * (0.5 + random.random())
