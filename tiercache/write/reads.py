"""Reads on this node see its own writes before the origin does.

``Cache.locate`` asks :func:`staged_blob` for a key with no index entry: a file written
here and not yet released is read from its staged copy (mapped, verified against the CRC32
it was acknowledged with as the slowest tier's ``verify`` setting says, unless the node
verified it lately: a file written here counts as verified from its close, for that tier's
``verify_ttl_seconds``); a path deleted here is gone; a path renamed here from an object
only the origin holds reads that object. Otherwise (nothing pending on the key) the read
goes on as before.
"""

from __future__ import annotations

import errno
import mmap
import os
import zlib
from typing import TYPE_CHECKING

from ..index import Entry, blob_id_for
from ..tiers.store import BlobMeta
from .journal import COPY, DELETE

if TYPE_CHECKING:
    from ..cache import Blob, Cache
    from ..origin import Origin


class StagedCorruptError(OSError):
    """A staged file (written here, not yet uploaded) no longer matches its checksum."""


def staged_blob(cache: Cache, origin: Origin, path: str, key: str) -> Blob | None:
    """The bytes this node wrote under ``key``, or None when nothing is pending on it."""
    from ..cache import Blob

    staging = cache.staging
    journal = None if staging is None else staging.existing_journal()
    if staging is None or journal is None:
        return None
    for _ in range(4):
        seen = journal.latest(key)
        if seen is None:
            return None
        op = seen.op
        if op.kind == DELETE:
            raise FileNotFoundError(errno.ENOENT, f"{key} was deleted (not yet at the origin)", key)
        if op.kind == COPY:
            return cache.locate(origin, op.src, pending=False)
        try:
            fd = os.open(staging.data_path(op.token), os.O_RDONLY)
        except FileNotFoundError:
            continue  # uploaded and released meanwhile: look again
        try:
            st = os.fstat(fd)
            size = st.st_size
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None
        finally:
            os.close(fd)
        view = memoryview(mm) if mm is not None else memoryview(b"")
        meta = BlobMeta(op.size, op.crc32, False, False, st.st_ino, st.st_mtime_ns)
        bid, ttl = blob_id_for(key), cache.config.tiers[-1].verify_ttl_seconds
        verify = cache.verify_staged and not cache.verified.fresh(bid, meta, ttl)
        if size != op.size or (verify and zlib.crc32(view) != op.crc32):
            view.release()
            if mm is not None:
                mm.close()
            raise StagedCorruptError(
                errno.EIO,
                f"{key}: the staged copy {staging.data_path(op.token)} does not match the "
                "checksum it was written with (damaged on the local disk before its upload)",
            )
        if verify and ttl > 0:
            cache.verified.record(bid, meta)
        cache.counters.add("staged_reads")
        return Blob(Entry(key, -1, op.size, meta, f"staged:{op.seq}"), view)
    return None
