"""Program order: which journal operations may change what the origin shows, now.

Bytes may travel in any order (multipart parts of many files go at once); what is ordered
is the step that makes an operation visible at the origin (a ``CompleteMultipartUpload``, a
whole-object ``PUT``, a ``DELETE``, a server-side copy). The rules:

1. On one key, operations apply in program order. An operation followed by a later one on
   the same key is *superseded*: it is cancelled unless its visible step is already under
   way, in which case the later one waits for it. (An overwrite then a delete leaves no
   object; a file rewritten twice is uploaded once.)
2. In one directory, a file (written, or created by a rename) becomes visible only after
   every file closed before it there is durable: PyTorch DCP's ``.metadata`` never reaches
   the origin before the data files it describes.
3. A delete waits for every earlier write, copy and rename anywhere: deleting the previous
   checkpoint after writing the next never leaves the origin with neither.
4. A copy (a rename of an object only the origin holds) reads its source at the origin:
   later operations on the source wait for it.

An operation the origin refused for good stays in the journal and keeps blocking what
depends on it (a commit file never appears without its data). Operations already verified
at the origin (``durable``) block nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .journal import COPY, DELETE, DURABLE, Op


@dataclass(frozen=True)
class Decision:
    """What may happen to one operation now."""

    superseded: bool  # a later operation on its key makes it moot
    may_publish: bool  # its visible step may be taken now (parts may always be sent)


def plan(ops: list[Op], publishing: set[int]) -> dict[int, Decision]:
    """A decision per operation; ``ops`` in program order, ``publishing``: sequence numbers
    whose visible step is under way right now."""
    later_on_key: set[tuple[str, str]] = set()
    superseded: set[int] = set()
    for op in reversed(ops):
        where = (op.origin, op.key)
        if where in later_on_key:
            superseded.add(op.seq)
        later_on_key.add(where)

    out: dict[int, Decision] = {}
    #: per (origin, directory): an earlier write not yet durable there
    dir_busy: set[tuple[str, str]] = set()
    #: per (origin, key): an earlier operation whose visible step is under way
    key_publishing: set[tuple[str, str]] = set()
    #: origin paths some earlier, unfinished copy reads
    copy_sources: set[tuple[str, str]] = set()
    unfinished_writes = False  # any earlier write, copy or rename not yet durable
    for op in ops:
        key = (op.origin, op.key)
        path = (op.origin, op.path)
        durable = op.state == DURABLE
        if op.seq in superseded:
            out[op.seq] = Decision(True, False)
        else:
            blocked = key in key_publishing or path in copy_sources
            if op.kind == DELETE:
                blocked = blocked or unfinished_writes
            else:
                blocked = blocked or (op.origin, op.directory) in dir_busy
                if op.kind == COPY:
                    blocked = blocked or (op.origin, op.src) in copy_sources
            out[op.seq] = Decision(False, not blocked and not durable)
        if op.seq in publishing:
            key_publishing.add(key)
        if durable or op.seq in superseded and op.seq not in publishing:
            continue
        if op.kind != DELETE:
            dir_busy.add((op.origin, op.directory))
            unfinished_writes = True
        if op.kind == COPY:
            copy_sources.add((op.origin, op.src))
    return out
