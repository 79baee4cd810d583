"""Program order (``tiercache.write.order``): which operation may become visible now.

The rules are a pure function of the journal; the kill and DCP tests show them holding
end to end, these name each rule on its own.
"""

from __future__ import annotations

from tiercache.write.journal import COPY, DELETE, DURABLE, FAILED, PUT, Op
from tiercache.write.order import plan


def op(seq: int, kind: str, path: str, *, state: str = "pending", src: str = "") -> Op:
    return Op(seq, kind, f"s3://{path}", path, "origin", src=src, state=state)


def may(ops: list[Op], publishing: set[int] | None = None) -> dict[int, str]:
    """Per sequence number: "go", "wait" or "moot" (superseded)."""
    decisions = plan(ops, publishing or set())
    return {
        seq: "moot" if d.superseded else ("go" if d.may_publish else "wait")
        for seq, d in decisions.items()
    }


def test_in_one_directory_a_file_waits_for_those_closed_before_it() -> None:
    ops = [op(1, PUT, "b/ckpt/data"), op(2, PUT, "b/ckpt/.metadata"), op(3, PUT, "b/other/x")]
    assert may(ops) == {1: "go", 2: "wait", 3: "go"}
    ops[0].state = DURABLE  # the data file is at the origin: the commit file may follow
    assert may(ops)[2] == "go"


def test_a_refused_data_file_keeps_the_commit_file_back() -> None:
    ops = [op(1, PUT, "b/ckpt/data", state=FAILED), op(2, PUT, "b/ckpt/.metadata")]
    assert may(ops) == {1: "go", 2: "wait"}


def test_overwrite_then_delete_leaves_only_the_delete() -> None:
    ops = [op(1, PUT, "b/p"), op(2, PUT, "b/p"), op(3, DELETE, "b/p")]
    assert may(ops) == {1: "moot", 2: "moot", 3: "go"}


def test_a_later_operation_waits_while_a_superseded_one_is_becoming_visible() -> None:
    ops = [op(1, PUT, "b/p"), op(2, PUT, "b/p")]
    assert may(ops, publishing={1}) == {1: "moot", 2: "wait"}


def test_a_delete_waits_for_every_earlier_write() -> None:
    ops = [op(1, PUT, "b/new/ckpt"), op(2, DELETE, "b/old/ckpt"), op(3, DELETE, "b/old/log")]
    assert may(ops) == {1: "go", 2: "wait", 3: "wait"}
    ops[0].state = DURABLE
    assert may(ops) == {1: "wait", 2: "go", 3: "go"}  # durable: only its release is left


def test_dcp_rename_publishes_metadata_after_data_and_drops_the_temporary() -> None:
    """Data file, .metadata.tmp, then the rename: a put of .metadata and a delete of the
    temporary (what ``fs.mv`` journals for a staged file)."""
    ops = [
        op(1, PUT, "b/ckpt/__0_0.distcp"),
        op(2, PUT, "b/ckpt/.metadata.tmp"),
        op(3, PUT, "b/ckpt/.metadata"),
        op(4, DELETE, "b/ckpt/.metadata.tmp"),
    ]
    assert may(ops) == {1: "go", 2: "moot", 3: "wait", 4: "wait"}


def test_a_renamed_origin_object_is_copied_before_its_source_changes() -> None:
    ops = [
        op(1, COPY, "b/d/new", src="b/d/old"),
        op(2, DELETE, "b/d/old"),
        op(3, PUT, "b/d/old"),  # written again under the old name
    ]
    assert may(ops) == {1: "go", 2: "moot", 3: "wait"}
