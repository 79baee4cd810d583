"""Where uploads go: S3 (multipart, concurrent parts, stored checksums) or any fsspec origin.

A target does one request's worth of work per call and raises on failure; the uploader
decides what to retry (see :func:`classify`). Every call that makes an object visible
returns only after the object is verified: its size, and its checksum as the origin stores
it (S3's ``x-amz-checksum-crc32``, whole-object or composite), else its MD5 ETag, else a
read-back. Each returns the object's version as reads name it (``"<size>:<etag>"``), so the
entry the upload becomes in the cache validates against the origin's listings.

S3 multipart uploads are created with ``ChecksumAlgorithm=CRC32, ChecksumType=FULL_OBJECT``:
S3 then keeps the whole object's CRC32, the very checksum the cache keeps, and readers on
other nodes verify against it. Each part carries its own CRC32, which S3 checks on receipt.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from fsspec import AbstractFileSystem

log = logging.getLogger("tiercache.write")

_READ_CHUNK = 8 << 20
#: S3 error codes that no retry will change: credentials, permissions, the bucket.
PERMANENT_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "InvalidBucketName",
    "InvalidObjectState",
    "InvalidSecurity",
    "MethodNotAllowed",
    "NoSuchBucket",
    "SignatureDoesNotMatch",
    "EntityTooLarge",
    "KMS.DisabledException",
    "KMS.NotFoundException",
}


class UploadGone(Exception):
    """The multipart upload no longer exists at the origin (completed, aborted, expired)."""


class VerifyError(OSError):
    """What the origin holds after an upload is not what was staged (size or checksum)."""


class Part(NamedTuple):
    """A part the origin acknowledged: its number, ETag, CRC32 and (on servers that keep
    no CRC32) MD5, which its ETag must equal."""

    number: int
    etag: str
    crc32: int
    md5: str | None = None


@dataclass(frozen=True)
class PartInfo:
    """A part the origin holds: its ETag, size and CRC32 (None if it kept none)."""

    etag: str
    size: int
    crc32: int | None


def error_code(exc: BaseException) -> str:
    """The S3 error code behind ``exc`` (s3fs translates ClientErrors and keeps the cause)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
        seen = seen.__cause__ or seen.__context__
    return ""


#: S3 error codes that say the parts the origin holds cannot make this object (a part
#: damaged or lost on the way): the upload starts afresh.
RESTART_CODES = {"InvalidPart", "InvalidPartOrder", "EntityTooSmall"}


def classify(exc: BaseException) -> str:
    """``"gone"`` (the multipart upload vanished: start a new one), ``"restart"`` (its parts
    are unusable: start a new one after a pause), ``"permanent"`` (keep the staged copy,
    report it, retry rarely) or ``"transient"`` (retry with backoff)."""
    code = error_code(exc)
    if code == "NoSuchUpload" or isinstance(exc, UploadGone):
        return "gone"
    if code in RESTART_CODES:
        return "restart"
    if code in PERMANENT_CODES:
        return "permanent"
    if isinstance(exc, VerifyError):
        return "restart"
    if isinstance(
        exc, (PermissionError, IsADirectoryError, NotADirectoryError, NotImplementedError)
    ):
        return "permanent"
    if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, OSError):
        return "permanent"
    if isinstance(exc, FileNotFoundError) and code not in ("", "NoSuchKey", "404"):
        return "permanent"  # NoSuchBucket and the like
    return "transient"


def b64crc(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def _crc_from(value: Any) -> tuple[int, int] | None:
    """(CRC32, parts) from an ``x-amz-checksum-crc32`` value (``"<b64>"`` or ``"<b64>-N"``)."""
    if not value:
        return None
    text = str(value)
    parts = 0
    if "-" in text:
        text, _, n = text.partition("-")
        parts = int(n) if n.isdigit() else -1
    try:
        return int.from_bytes(base64.b64decode(text), "big"), parts
    except ValueError:
        return None


def _plain_md5(etag: str) -> bool:
    return len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower())


def composite_crc(parts: list[Part]) -> int:
    """S3's COMPOSITE checksum of a multipart object: the CRC32 of its parts' CRC32s."""
    return zlib.crc32(b"".join(p.crc32.to_bytes(4, "big") for p in parts))


def multipart_etag(parts: list[Part]) -> str | None:
    """The ETag S3 (and most S3-compatible servers) give a multipart object: the MD5 of
    its parts' MD5s, then ``-<parts>``; None when a part's MD5 is unknown."""
    if any(p.md5 is None for p in parts):
        return None
    joined = b"".join(bytes.fromhex(p.md5 or "") for p in parts)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(parts)}"


def file_crc(path: Path, start: int = 0, length: int | None = None) -> int:
    size = os.path.getsize(path) if length is None else start + length
    crc = 0
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        while pos < size:
            chunk = f.read(min(_READ_CHUNK, size - pos))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            pos += len(chunk)
    return crc


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_s3(fs: AbstractFileSystem) -> bool:
    return type(fs).__module__.startswith("s3fs")


def target_for(fs: AbstractFileSystem, timeout: float) -> Target:
    return S3Target(fs, timeout) if is_s3(fs) else FsTarget(fs, timeout)


class Target:
    """What the uploader needs from an origin (see the module docstring)."""

    multipart = False

    def __init__(self, fs: AbstractFileSystem, timeout: float) -> None:
        self.fs = fs
        self.timeout = timeout

    def put(self, path: str, local: Path, size: int, crc32: int) -> str:
        raise NotImplementedError

    def delete(self, path: str) -> None:
        raise NotImplementedError

    def copy(self, src: str, dst: str) -> str:
        raise NotImplementedError

    def verify(
        self, path: str, size: int, crc32: int, parts: list[Part] | None, local: Path | None = None
    ) -> str:
        """Check what the origin holds at ``path`` against what was staged (``local``)."""
        raise NotImplementedError

    # multipart (S3 only)
    def create(self, path: str) -> dict[str, Any]:
        raise NotImplementedError

    def list_parts(self, path: str, upload_id: str) -> dict[int, PartInfo]:
        raise NotImplementedError

    def upload_part(
        self, path: str, upload_id: str, number: int, data: bytes, crc32: int, checksums: bool
    ) -> Part:
        raise NotImplementedError

    def complete(
        self,
        path: str,
        upload: dict[str, Any],
        parts: list[Part],
        size: int,
        crc32: int,
        local: Path | None = None,
    ) -> str:
        raise NotImplementedError

    def abort(self, path: str, upload_id: str) -> None:
        raise NotImplementedError


class S3Target(Target):
    """S3 through the origin's own s3fs (its credentials, endpoint, extra request arguments)."""

    multipart = True

    def _call(self, method: str, timeout: float | None = None, **kwargs: Any) -> Any:
        from fsspec.asyn import sync

        return sync(
            self.fs.loop, self.fs._call_s3, method, timeout=timeout or self.timeout, **kwargs
        )

    def _split(self, path: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(path)
        if not key:
            raise IsADirectoryError(f"s3://{path} is a bucket, not an object")
        return bucket, key

    def put(self, path: str, local: Path, size: int, crc32: int) -> str:
        bucket, key = self._split(path)
        data = local.read_bytes()
        if len(data) != size or zlib.crc32(data) != crc32:
            raise VerifyError(f"staged file {local} no longer matches its journal entry")
        resp = self._call(
            "put_object", Bucket=bucket, Key=key, Body=data,
            ChecksumAlgorithm="CRC32", ChecksumCRC32=b64crc(crc32),
            timeout=self.timeout + size / 1e6,
        )  # fmt: skip
        etag = str(resp.get("ETag", "")).strip('"')
        if _plain_md5(etag):
            # The server's own digest of what it stored (not an echo of what we claimed).
            if etag.lower() != hashlib.md5(data, usedforsecurity=False).hexdigest():
                raise VerifyError(f"s3://{path}: the origin stored other bytes (ETag {etag})")
            return f"{size}:{etag}"
        echoed = _crc_from(resp.get("ChecksumCRC32"))
        if echoed is not None and echoed[1] == 0 and etag:
            # Encrypted with KMS or a customer key: the ETag is no digest, but S3 checked the
            # body against the CRC32 sent before storing it.
            if echoed[0] != crc32:
                raise VerifyError(f"s3://{path}: stored CRC32 {echoed[0]:08x}, sent {crc32:08x}")
            return f"{size}:{etag}"
        return self.verify(path, size, crc32, None)

    def verify(
        self, path: str, size: int, crc32: int, parts: list[Part] | None, local: Path | None = None
    ) -> str:
        bucket, key = self._split(path)
        head = self._call("head_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        length = int(head.get("ContentLength", -1))
        etag = str(head.get("ETag", "")).strip('"')
        if length != size:
            raise VerifyError(f"s3://{path} holds {length} bytes, {size} were staged")
        stored = _crc_from(head.get("ChecksumCRC32"))
        kind = head.get("ChecksumType") or ("COMPOSITE" if stored and stored[1] else "FULL_OBJECT")
        if stored is not None and kind == "FULL_OBJECT":
            if stored[0] != crc32:
                raise VerifyError(f"s3://{path}: stored CRC32 {stored[0]:08x}, staged {crc32:08x}")
            return f"{size}:{etag}"
        if stored is not None and parts is not None and stored[1] == len(parts):
            if stored[0] != composite_crc(parts):
                raise VerifyError(f"s3://{path}: composite CRC32 does not match the parts sent")
            return f"{size}:{etag}"
        # No CRC32 kept (an S3-compatible server without flexible checksums): the ETag is
        # the server's own digest of what it stored, part by part.
        expected = multipart_etag(parts) if parts else None
        if expected is not None and "-" in etag:
            if etag.lower() != expected:
                raise VerifyError(f"s3://{path}: ETag {etag}, the parts sent make {expected}")
            return f"{size}:{etag}"
        if _plain_md5(etag) and local is not None:
            # Some servers give a multipart object the MD5 of its whole body: hash the staged
            # copy here rather than read the object back over the network.
            digest = file_md5(local)
            if etag.lower() != digest:
                raise VerifyError(f"s3://{path}: ETag {etag}, the staged file's MD5 is {digest}")
            return f"{size}:{etag}"
        return self._read_back(path, size, crc32, etag)

    def _read_back(self, path: str, size: int, crc32: int, etag: str) -> str:
        """No checksum kept by the origin: read the object back and compare."""
        log.info("s3://%s: the origin keeps no CRC32; verifying by reading it back", path)
        crc = 0
        with self.fs.open(path, "rb", block_size=_READ_CHUNK) as f:
            while chunk := f.read(_READ_CHUNK):
                crc = zlib.crc32(chunk, crc)
        if crc != crc32:
            raise VerifyError(f"s3://{path}: read back CRC32 {crc:08x}, staged {crc32:08x}")
        return f"{size}:{etag}"

    def delete(self, path: str) -> None:
        bucket, key = self._split(path)
        self._call("delete_object", Bucket=bucket, Key=key)  # absent already: S3 says 204
        self.fs.invalidate_cache(path)

    def copy(self, src: str, dst: str) -> str:
        self.fs.copy(src, dst)  # server-side; s3fs copies parts beyond 5 GiB
        self.fs.invalidate_cache(dst)
        info = self.fs.info(dst)
        return f"{info.get('size')}:{str(info.get('ETag', '')).strip(chr(34))}"

    # -- multipart ---------------------------------------------------------------------------------
    def create(self, path: str) -> dict[str, Any]:
        bucket, key = self._split(path)
        try:
            resp = self._call(
                "create_multipart_upload", Bucket=bucket, Key=key,
                ChecksumAlgorithm="CRC32", ChecksumType="FULL_OBJECT",
            )  # fmt: skip
        except Exception as exc:
            if error_code(exc) not in ("InvalidArgument", "NotImplemented", "InvalidRequest"):
                raise
            resp = self._call("create_multipart_upload", Bucket=bucket, Key=key)
        # A server that answers without the algorithm keeps no CRC32 (S3-compatible servers
        # without flexible checksums): parts are then checked by their MD5 ETags.
        checksums = str(resp.get("ChecksumAlgorithm", "")).upper() == "CRC32"
        return {"upload_id": resp["UploadId"], "checksums": checksums}

    def list_parts(self, path: str, upload_id: str) -> dict[int, PartInfo]:
        bucket, key = self._split(path)
        out: dict[int, PartInfo] = {}
        marker = 0
        while True:
            resp = self._call(
                "list_parts", Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
            )
            for part in resp.get("Parts", []):
                crc = _crc_from(part.get("ChecksumCRC32"))
                out[int(part["PartNumber"])] = PartInfo(
                    str(part["ETag"]).strip('"'), int(part["Size"]), crc[0] if crc else None
                )
            if not resp.get("IsTruncated"):
                return out
            marker = int(resp.get("NextPartNumberMarker") or max(out, default=0))

    def upload_part(
        self, path: str, upload_id: str, number: int, data: bytes, crc32: int, checksums: bool
    ) -> Part:
        bucket, key = self._split(path)
        extra = {"ChecksumAlgorithm": "CRC32", "ChecksumCRC32": b64crc(crc32)} if checksums else {}
        resp = self._call(
            "upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
            Body=data, timeout=self.timeout + len(data) / 1e6, **extra,
        )  # fmt: skip
        etag = str(resp["ETag"]).strip('"')
        echoed = _crc_from(resp.get("ChecksumCRC32"))
        if echoed is not None and echoed[0] != crc32:
            raise VerifyError(f"s3://{path} part {number}: stored CRC32 differs from the sent")
        md5 = None
        if not checksums:  # the server's MD5 of the part is all there is to check it by
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if _plain_md5(etag) and etag.lower() != md5:
                raise VerifyError(f"s3://{path} part {number}: the origin stored other bytes")
        return Part(number, etag, crc32, md5)

    def complete(
        self,
        path: str,
        upload: dict[str, Any],
        parts: list[Part],
        size: int,
        crc32: int,
        local: Path | None = None,
    ) -> str:
        bucket, key = self._split(path)
        checksums = bool(upload.get("checksums"))
        listed: list[dict[str, Any]] = []
        for p in parts:
            item: dict[str, Any] = {"PartNumber": p.number, "ETag": f'"{p.etag}"'}
            if checksums:
                item["ChecksumCRC32"] = b64crc(p.crc32)
            listed.append(item)
        extra: dict[str, Any] = {"MpuObjectSize": size}
        if checksums:
            extra.update(ChecksumCRC32=b64crc(crc32), ChecksumType="FULL_OBJECT")
        try:
            self._call(
                "complete_multipart_upload", Bucket=bucket, Key=key,
                UploadId=upload["upload_id"], MultipartUpload={"Parts": listed},
                timeout=self.timeout + size / 1e8, **extra,
            )  # fmt: skip
        except Exception as exc:
            if classify(exc) != "gone":
                raise
            # Completed by an earlier attempt whose answer was lost: what is there now?
        self.fs.invalidate_cache(path)
        return self.verify(path, size, crc32, parts, local)

    def abort(self, path: str, upload_id: str) -> None:
        bucket, key = self._split(path)
        try:
            self._call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            if classify(exc) != "gone":
                raise


class FsTarget(Target):
    """Any other fsspec origin (a local or network filesystem, GCS, ...): whole-file puts,
    verified by size and a read-back."""

    def put(self, path: str, local: Path, size: int, crc32: int) -> str:
        parent = path.rsplit("/", 1)[0]
        if parent and parent != path:
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.put_file(str(local), path)
        return self.verify(path, size, crc32, None)

    def verify(
        self, path: str, size: int, crc32: int, parts: list[Part] | None, local: Path | None = None
    ) -> str:
        from ..origin import object_version

        self.fs.invalidate_cache(path)
        info = self.fs.info(path)
        if info.get("size") != size:
            raise VerifyError(f"{path}: the origin holds {info.get('size')} bytes, {size} staged")
        crc = 0
        with self.fs.open(path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                crc = zlib.crc32(chunk, crc)
        if crc != crc32:
            raise VerifyError(f"{path}: read back CRC32 {crc:08x}, staged {crc32:08x}")
        return object_version(info)

    def delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)
        self.fs.invalidate_cache(path)

    def copy(self, src: str, dst: str) -> str:
        from ..origin import object_version

        self.fs.copy(src, dst)
        self.fs.invalidate_cache(dst)
        return object_version(self.fs.info(dst))
