"""The write half of the ``tiercache`` filesystem: open for writing, pipe, put, rm, mv, sync.

:class:`WriteOps` is mixed into :class:`tiercache.fs.TierCacheFileSystem`. Every operation
is recorded in the write journal (``journal.py``) and acknowledged once durable on this
node; the engine's uploader carries it to the origin in program order (``order.py``).
Until then this node's reads (``open``, ``cat_file``) and listings (``ls``, ``info``,
``exists``, ``find``) show it: a written file is there, a deleted one is gone, a renamed one
has moved.

Renames: a file still staged is linked to its new name (no copy) and uploaded under it; an
object only the origin holds is copied there (server-side for S3) and then deleted.
Directories: object stores have none, so ``mkdir``/``makedirs``/``rmdir`` do nothing there
(a bare bucket name goes to the origin as before); origins with real directories (a local
or network filesystem) get them at once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import posixpath
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fsspec.transaction import Transaction

from ..index import blob_id_for
from ..ipc import dump_origin
from ..tiers.store import BlobMeta
from .files import StagedFile
from .journal import COPY, DELETE, FAILED, PUT, Op, _under, origin_digest
from .staging import Staging, journal_of

if TYPE_CHECKING:
    from ..cache import Cache
    from ..origin import Origin

log = logging.getLogger("tiercache.write")


class UploadFailed(OSError):
    """An upload the origin refused for good (write-through, or ``sync(raise_on_failure)``)."""


class StagedTransaction(Transaction):
    """``with fs.transaction:``: every file written inside is acknowledged in one journal
    commit when the block ends, or none is (an exception, or a failed commit)."""

    def complete(self, commit: bool = True) -> None:
        files = list(self.files)
        self.files.clear()
        fs: Any = getattr(self, "fs", None)
        try:
            if commit:
                staged = [f for f in files if isinstance(f, StagedFile)]
                for f in staged:
                    f.stage()
                if staged:
                    fs._committer.commit(staged)
                for f in files:
                    if not isinstance(f, StagedFile):
                        f.commit()
            else:
                for f in files:
                    f.discard()
        except BaseException:
            for f in files:
                with contextlib.suppress(Exception):
                    f.discard()
            raise
        finally:
            fs._intrans = False
            fs._transaction = None
            self.fs = None


class FileCommitter:
    """Acknowledges staged files for one filesystem (see ``files.Committer``)."""

    def __init__(self, fs: WriteOps) -> None:
        self.fs = fs

    @property
    def step(self) -> int:
        return self.fs._staging.step

    def reserve(self, f: StagedFile, need: int) -> None:
        self.fs._staging.reserve(need, f.size, self.fs._kick)

    def written(self, f: StagedFile) -> None:
        """More of ``f`` was written: each time another whole part is there, the uploader
        is told, so that a large file's parts travel while it is still being written
        (one-way; a hint: at close the journal entry says whether they may be kept)."""
        if not f.sequential:
            return
        part = self.fs._staging.config.part_size
        parts = f.size // part
        if parts <= f.early_parts:
            return
        f.early_parts = parts
        with contextlib.suppress(Exception):
            self.fs.cache.engine_call(
                "upload_early", _oneway=True, token=f.token, key=f.key, path=f.path,
                origin=self.fs._origin_id(), written=parts * part,
            )  # fmt: skip

    def rewritten(self, f: StagedFile) -> None:
        """``f`` is no longer written front to back: parts sent early may be stale."""
        if f.early_parts:
            self._abandon_early(f)

    def _abandon_early(self, f: StagedFile) -> None:
        with contextlib.suppress(Exception):
            self.fs.cache.engine_call("upload_abandon", _oneway=True, token=f.token)

    def discard(self, f: StagedFile) -> None:
        staging = self.fs._staging
        staging.discard_open(f.token)
        if f.early_parts:
            self._abandon_early(f)

    def commit(self, files: list[StagedFile]) -> None:
        fs = self.fs
        staging = fs._staging
        staging.publish([f.token for f in files])
        origin = fs._origin_id()
        ops: list[Op] = []
        try:
            with staging.journal.write() as w:
                for f in files:
                    op = Op(0, PUT, f.key, f.path, origin, token=f.token, size=f.size)
                    op.crc32 = f.crc32
                    op.early = f.sequential and f.early_parts > 0
                    ops.append(w.append(op))
        except BaseException:
            for f in files:
                staging.release(f.token)
            raise
        for f in files:
            f.committed()
            fs._verified(f)
        fs._shadow([op.key for op in ops])
        fs._kick()
        if fs.cache.config.write is not None and fs.cache.config.write.mode == "write-through":
            fs._wait_for([op.seq for op in ops], timeout=None, raise_on_failure=True)


class WriteOps:
    """Write methods of :class:`tiercache.fs.TierCacheFileSystem` (see the module docstring)."""

    transaction_type = StagedTransaction
    cache: Cache
    fs: Any
    _intrans: bool
    _transaction: Any

    if TYPE_CHECKING:

        @property
        def origin(self) -> Origin: ...

        _strip_protocol: Callable[[Any], str]

        def info(self, path: str, **kwargs: Any) -> dict[str, Any]: ...

        def exists(self, path: str, **kwargs: Any) -> bool: ...

        def find(self, path: str, **kwargs: Any) -> Any: ...

        def isdir(self, path: str) -> bool: ...

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def _staging(self) -> Staging:
        staging = self.cache.staging
        if staging is None:
            raise PermissionError(
                f"writes through tiercache are off for this cache ([write] mode = "
                f'"read-only" in {self.cache.config.source}); set [write] mode = "write-back"'
            )
        return staging

    @property
    def _committer(self) -> FileCommitter:
        committer = self.__dict__.get("_tc_committer")
        if committer is None:
            committer = self.__dict__["_tc_committer"] = FileCommitter(self)
        return committer

    def _origin_id(self) -> str:
        """The digest naming this origin in the journal (its pickle is stored once)."""
        origin = self.origin
        if origin.pickled is None:
            origin.pickled = dump_origin(origin.fs)
        digest = origin_digest(origin.pickled)
        known: set[str] = self.__dict__.setdefault("_tc_origins", set())
        if digest not in known:
            self._staging.journal.remember_origin(digest, origin.pickled)
            known.add(digest)
        return digest

    def _verified(self, f: StagedFile) -> None:
        """Record the staged file as hashed clean now (its CRC32 is of the very bytes just
        written): reads of it, and of the tier entry it becomes (a link: the same inode),
        skip the re-hash for the slowest tier's ``verify_ttl_seconds``, as for any blob a
        process on the node verified."""
        meta = BlobMeta(f.size, f.crc32, False, False, f.ino, f.mtime_ns)
        if self.cache.config.tiers[-1].verify_ttl_seconds > 0:
            self.cache.verified.record(blob_id_for(f.key), meta)

    def _shadow(self, keys: list[str]) -> None:
        """Drop what the cache holds under ``keys`` (at once, before acknowledging): reads of
        a key with no entry look in the journal, so they see these writes from now on."""
        for key in keys:
            self.cache.engine_call("invalidate", key=key)

    def _kick(self) -> None:
        """Tell the engine there is upload work (electing one if none runs): one way."""
        with contextlib.suppress(Exception):
            self.cache.engine_call("uploads", _oneway=True)

    def _key(self, path: str) -> str:
        return self.origin.key(path)

    def _object_store(self) -> bool:
        protocol = self.origin.protocol
        return protocol in ("s3", "s3a", "gs", "gcs", "az", "abfs", "adl", "oss", "r2")

    # -- opening for writing ----------------------------------------------------------------------
    def _open_write(self, path: str, mode: str, autocommit: bool) -> StagedFile:
        if mode not in ("wb", "xb"):
            raise ValueError(
                f"tiercache cannot open {path!r} with mode {mode!r}: objects are read ('rb') or "
                "written whole ('wb', 'xb'); appending or updating in place is not supported"
            )
        staging = self._staging
        if mode == "xb" and self.exists(path):
            raise FileExistsError(errno.EEXIST, f"{self._key(path)} exists", path)
        if not posixpath.basename(path.rstrip("/")):
            raise IsADirectoryError(errno.EISDIR, f"not a file name: {path!r}", path)
        fd, token = staging.create()
        return StagedFile(
            self._committer, path, self._key(path), fd, token, mode=mode, autocommit=autocommit
        )

    # -- deleting ---------------------------------------------------------------------------------
    def rm_file(self, path: str, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        info = self.info(path)  # FileNotFoundError when neither this node nor the origin has it
        if info["type"] == "directory":
            if not self._object_store():
                self.fs.rmdir(path)
            return
        self._append([Op(0, DELETE, self._key(path), path, self._origin_id())])

    _rm = rm_file

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        expand = self.expand_path  # type: ignore[attr-defined]
        for p in reversed(expand(path, recursive=recursive, maxdepth=maxdepth)):
            self.rm_file(p)

    def rmdir(self, path: str) -> None:
        path = self._strip_protocol(path)
        if not self._object_store() or "/" not in path.strip("/"):
            self.fs.rmdir(path)

    # -- renaming ---------------------------------------------------------------------------------
    def mv(
        self,
        path1: Any,
        path2: Any,
        recursive: bool = False,
        maxdepth: int | None = None,
        **kw: Any,
    ) -> None:
        src = self._strip_protocol(path1)
        dst = self._strip_protocol(path2)
        if src == dst:
            return
        if recursive or self.isdir(src):
            files = sorted(self.find(src, maxdepth=maxdepth))
            if not files:
                raise FileNotFoundError(errno.ENOENT, f"nothing to move at {self._key(src)}", src)
            for f in files:
                self._mv_file(f, dst.rstrip("/") + "/" + f[len(src.rstrip("/")) + 1 :])
            return
        self._mv_file(src, dst)

    def rename(self, path1: Any, path2: Any, **kwargs: Any) -> None:
        self.mv(path1, path2, **kwargs)

    def _mv_file(self, src: str, dst: str) -> None:
        staging = self._staging
        journal = staging.journal
        origin = self._origin_id()
        src_key, dst_key = self._key(src), self._key(dst)
        for _ in range(20):
            seen = journal.latest(src_key)
            if seen is not None and seen.op.kind == DELETE:
                raise FileNotFoundError(errno.ENOENT, f"no such object: {src_key}", src)
            if seen is not None and seen.op.kind == PUT:
                # Still staged here: the new name gets its own link to the same bytes.
                old = seen.op
                with staging.linked(old.token) as token:
                    try:
                        with journal.write() as w:
                            current = w.latest(src_key)
                            if current is None or current.seq != old.seq:
                                raise _Changed
                            put = Op(0, PUT, dst_key, dst, origin, token=token, size=old.size)
                            put.crc32 = old.crc32
                            w.append(put)
                            w.append(Op(0, DELETE, src_key, src, origin))
                    except BaseException as exc:
                        staging.release(token)
                        if isinstance(exc, _Changed):
                            continue
                        raise
                self._shadow([dst_key, src_key])
                self._kick()
                return
            if seen is not None:  # a pending copy: move what it will copy
                src_info = {"size": seen.op.size}
                copy_from = seen.op.src
            else:
                src_info = self.info(src)
                if src_info["type"] == "directory":
                    raise IsADirectoryError(errno.EISDIR, f"{src_key} is a directory", src)
                copy_from = src
            with journal.write() as w:
                current = w.latest(src_key)
                if (current.seq if current else None) != (seen.op.seq if seen else None):
                    continue
                copy = Op(0, COPY, dst_key, dst, origin, src=copy_from)
                copy.size = int(src_info.get("size") or 0)
                w.append(copy)
                w.append(Op(0, DELETE, src_key, src, origin))
            self._shadow([dst_key, src_key])
            self._kick()
            return
        raise OSError(errno.EBUSY, f"{src_key} kept changing while it was being renamed")

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        opener = self.open  # type: ignore[attr-defined]
        with opener(path1, "rb") as source, opener(path2, "wb") as target:
            while True:
                chunk = source.read(8 << 20)
                if not chunk:
                    break
                target.write(chunk)

    # -- directories and empty files -----------------------------------------------------------
    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if not self._object_store() or "/" not in path.strip("/"):
            self.fs.mkdir(path, create_parents=create_parents, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        if not self._object_store() or "/" not in path.strip("/"):
            self.fs.makedirs(path, exist_ok=exist_ok)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        if truncate or not self.exists(path):
            with self.open(path, "wb"):  # type: ignore[attr-defined]
                pass

    # -- journal helpers ------------------------------------------------------------------------
    def _append(self, ops: list[Op]) -> list[Op]:
        with self._staging.journal.write() as w:
            done = [w.append(op) for op in ops]
        self._shadow([op.key for op in ops])
        self._kick()
        return done

    # -- durability -------------------------------------------------------------------------------
    def sync(self, path: str | None = None, timeout: float | None = None) -> list[dict[str, Any]]:
        """Wait until everything written under ``path`` (everything, if None) before this
        call is durable at the origin; returns what is still pending when ``timeout``
        seconds have passed ([] when all of it is durable).

        Uploads the origin refused for good (``state: failed``) are returned at once: they
        stay staged, and waiting would not change them (see ``tiercache uploads``).
        """
        journal = self._staging.existing_journal()
        if journal is None:
            return []  # nothing was ever written here
        limit = journal.last_seq()
        prefix = "" if path is None else self._strip_protocol(path)
        seqs = [op.seq for op in journal.pending() if op.seq <= limit]
        return self._wait_for(seqs, timeout=timeout, prefix=prefix)

    def _wait_for(
        self,
        seqs: list[int],
        *,
        timeout: float | None,
        prefix: str = "",
        raise_on_failure: bool = False,
    ) -> list[dict[str, Any]]:
        journal = self._staging.journal
        deadline = None if timeout is None else time.monotonic() + timeout
        wanted = set(seqs)
        self._kick()
        kicked = time.monotonic()
        delay = 0.005
        while True:
            left = [
                op
                for op in journal.pending()
                if op.seq in wanted and (_under(op.path, prefix) or _under(op.src, prefix))
            ]
            if not left:
                return []
            if all(op.state == FAILED for op in left):
                if raise_on_failure:
                    op = left[0]
                    raise UploadFailed(
                        errno.EIO,
                        f"upload of {op.key} failed: {op.error}; the staged copy is kept "
                        "(`tiercache uploads` lists it, `--retry` tries again)",
                    )
                return [op.public() for op in left]
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return [op.public() for op in left]
            if now - kicked > 1.0:  # an engine may have died meanwhile: make sure one runs
                self._kick()
                kicked = now
            time.sleep(delay if deadline is None else min(delay, max(0.0, deadline - now)))
            delay = min(0.1, delay * 2)

    def uploads(self) -> list[dict[str, Any]]:
        """Every write, delete and rename of this node not yet durable at the origin."""
        journal = journal_of(self.cache.staging)
        return [] if journal is None else [op.public() for op in journal.pending()]

    # -- what reads and listings see ---------------------------------------------------------------
    def _staged_info(self, path: str) -> dict[str, Any] | None:
        """This node's answer for ``info(path)`` ahead of the origin, or None (ask it).

        Raises FileNotFoundError for a path deleted here and not yet at the origin.
        """
        journal = journal_of(self.cache.staging)
        if journal is None:
            return None
        key = self._key(path)
        seen = journal.latest(key)
        if seen is not None:
            if seen.exists:
                return {"name": path, "size": seen.op.size, "type": "file", "staged": True}
            return self._deleted_here(path, key)
        done = journal.done_for(key)
        parent = posixpath.dirname(path.rstrip("/"))
        if done is not None and done["at"] >= self.origin.listed_at(parent):
            if done["kind"] == DELETE:
                return self._deleted_here(path, key)
            return {"name": path, "size": done.get("size", 0), "type": "file"}
        return None

    def _deleted_here(self, path: str, key: str) -> dict[str, Any]:
        """``info`` of a path deleted on this node: a directory if files written under it
        are pending, else not found."""
        if self._pending_children(path):
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(errno.ENOENT, f"{key} was deleted", path)

    def _pending_children(self, path: str) -> bool:
        journal = journal_of(self.cache.staging)
        if journal is None:
            return False
        base = path.rstrip("/") + "/"
        return any(
            op.path.startswith(base) and op.kind != DELETE
            for op in journal.latest_under(path).values()
        )

    def _with_writes(self, path: str, listing: list[dict[str, Any]] | None) -> Any:
        """``listing`` (None: the origin has no such directory) with this node's writes,
        deletes and renames under ``path`` applied, and those completed since it was taken."""
        journal = journal_of(self.cache.staging)
        if journal is None:
            return listing
        pending = journal.latest_under(path)
        done = journal.done_under(path)
        if not pending and not done:
            return listing
        base = path.rstrip("/")
        entries: dict[str, dict[str, Any]] = {}
        for item in listing or []:
            entries[self._strip_protocol(item["name"]).rstrip("/")] = item
        changes: deque[tuple[str, str, int]] = deque()
        listed_at = self.origin.listed_at(base)
        for p, item in done.items():
            if item["at"] >= listed_at:
                changes.append((p, item["kind"], int(item.get("size", 0))))
        for p, op in pending.items():
            changes.append((p, op.kind, op.size))
        for p, kind, size in changes:
            if p == base:
                continue
            rest = p[len(base) + 1 :] if base else p
            head = rest.split("/", 1)[0]
            name = f"{base}/{head}" if base else head
            if "/" in rest:
                if kind != DELETE and name not in entries:
                    entries[name] = {"name": name, "size": 0, "type": "directory"}
            elif kind == DELETE:
                entries.pop(name, None)
            else:
                entries[name] = {"name": name, "size": size, "type": "file"}
        if listing is None and not entries:
            return None
        return list(entries.values())


class _Changed(Exception):
    """The journal changed between a look and the write that depended on it: look again."""
