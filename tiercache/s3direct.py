"""Whole-object S3 GETs without botocore's response path: a SigV4-presigned URL, read by
``http.client`` straight into one buffer.

s3fs reads a body through aiohttp and botocore: every socket read becomes a Python
callback and a queued chunk, the chunks are joined at the end, and the whole body is
checksummed on the event loop's thread. That costs about 7 ms of CPU per 4 MiB, and on a
training node that CPU is the readers'. Here the request is signed by botocore (a presigned
URL: no network, the same credentials, endpoint and addressing as the s3fs client), and the
body is received with ``recv_into`` into a buffer of the announced length, with the GIL
released: about a third of the CPU (see docs/performance.md).

Only plain GETs take this path. Anything it does not handle goes back to s3fs (the caller's
fallback, :class:`Unsupported`): requester-pays buckets, extra request arguments such as
SSE-C keys, proxies, redirects, 400s and 403s, so those read exactly as they do through
s3fs. A missing object (404) and server trouble (5xx, 429) are answered here.
"""

from __future__ import annotations

import contextlib
import http.client
import inspect
import os
import re
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

#: Presigned URLs live this long; a fresh one is signed for every request.
_EXPIRES = 900
#: Signing credentials are re-read this often (temporary credentials rotate).
_CREDENTIALS_SECONDS = 300.0
_SIGNED_HEADERS = {"x-amz-checksum-mode": "ENABLED"}
_XML_CODE = re.compile(r"<Code>([^<]{1,64})</Code>")
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")


class Unsupported(Exception):
    """This request is not for the direct path; send it through s3fs instead."""


class ServerError(ConnectionError):
    """A 5xx or throttling answer: worth retrying, like a dropped connection."""


class VersionMismatch(Exception):
    """A ranged GET found another version of the object than the one it was pinned to."""


class TooLarge(Exception):
    """A whole-object GET announced more bytes than the caller takes in one piece."""

    def __init__(self, url: str, size: int) -> None:
        super().__init__(f"{url}: {size} bytes")
        self.size = size


@dataclass
class Response:
    """The parts of a GET's answer the cache uses, named as botocore names them."""

    body: bytearray
    headers: dict[str, Any]


class DirectGetter:
    """Plain GETs of whole S3 objects for one s3fs filesystem (see the module docstring)."""

    def __init__(self, fs: Any) -> None:
        if getattr(fs, "requester_pays", False) or getattr(fs, "s3_additional_kwargs", None):
            raise Unsupported("requester-pays or extra request arguments")
        if any(os.environ.get(v) for v in _PROXY_VARIABLES):
            raise Unsupported("a proxy is configured")
        config = getattr(fs, "config_kwargs", None) or {}
        if config.get("proxies"):
            raise Unsupported("a proxy is configured")
        self.fs = fs
        self._verify = (getattr(fs, "client_kwargs", None) or {}).get("verify", True)
        self._ssl: ssl.SSLContext | None = None  # made on the first HTTPS connection
        self._lock = threading.Lock()
        self._signer: Any = None
        self._session: Any = None
        self._read_timeout = 60.0
        self._signed_at = -1e18
        self._local = threading.local()

    # -- signing --------------------------------------------------------------------------------
    def _presigner(self) -> Any:
        """A botocore client used only to sign (it never sends), kept in step with s3fs's."""
        with self._lock:
            if time.monotonic() - self._signed_at < _CREDENTIALS_SECONDS:
                return self._signer
            from botocore import UNSIGNED
            from botocore.config import Config
            from botocore.session import Session
            from fsspec.asyn import sync

            client = sync(self.fs.loop, self.fs.set_session)
            meta = client.meta
            # Waits on the socket are bounded as botocore bounds them for this client.
            self._read_timeout = float(meta.config.read_timeout or 60)
            anonymous = getattr(self.fs, "anon", False)
            creds = None if anonymous else sync(self.fs.loop, _frozen_credentials, self.fs)
            if creds is None and not anonymous:
                raise Unsupported("no credentials found to sign with")
            signature = UNSIGNED if anonymous else "s3v4"
            session = self._session
            if session is None:
                # s3fs's session has parsed botocore's service models already (about a
                # second of CPU for a session that starts from the JSON files): share them.
                session = self._session = Session()
                with contextlib.suppress(Exception):
                    loader = self.fs.session.get_component("data_loader")
                    session.register_component("data_loader", loader)
            self._signer = session.create_client(
                "s3",
                region_name=meta.region_name,
                endpoint_url=meta.endpoint_url,
                aws_access_key_id=creds.access_key if creds else None,
                aws_secret_access_key=creds.secret_key if creds else None,
                aws_session_token=creds.token if creds else None,
                config=meta.config.merge(Config(signature_version=signature)),
            )
            self._signed_at = time.monotonic()
            return self._signer

    def url(self, bucket: str, key: str, version_id: str | None, checksum: bool = True) -> str:
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if checksum:
            params["ChecksumMode"] = "ENABLED"
        if version_id:
            params["VersionId"] = version_id
        return str(
            self._presigner().generate_presigned_url(
                "get_object", Params=params, ExpiresIn=_EXPIRES
            )
        )

    # -- the request ----------------------------------------------------------------------------
    def get(
        self,
        bucket: str,
        key: str,
        version_id: str | None,
        timeout: float | None,
        limit: int | None = None,
    ) -> Response:
        """The whole object within ``timeout`` seconds, no socket wait longer than the s3fs
        client's ``read_timeout``. A missing object raises FileNotFoundError; server errors,
        broken or short bodies raise OSError (the caller retries); any other answer
        :class:`Unsupported`. An object of more than ``limit`` bytes raises
        :class:`TooLarge` as soon as its length is announced (its body is not read)."""
        parts = urllib.parse.urlsplit(self.url(bucket, key, version_id))
        wait = self._read_timeout if timeout is None else min(timeout, self._read_timeout)
        resp = self._send(parts, wait)
        try:
            if resp.status != 200:
                _refuse(resp, f"s3://{bucket}/{key}")
            headers = {k.lower(): v for k, v in resp.getheaders()}
            length = int(headers.get("content-length", -1))
            if limit is not None and length > limit:
                raise TooLarge(f"s3://{bucket}/{key}", length)
            body = _read_body(resp, length, timeout)
        except (Unsupported, FileNotFoundError, ServerError):
            raise  # the answer was read whole: the connection is still good
        except BaseException:
            self._drop_connection(parts.scheme, parts.hostname or "", parts.port)
            raise
        return Response(body, _as_botocore(headers, len(body)))

    def get_range(
        self,
        bucket: str,
        key: str,
        version_id: str | None,
        span: tuple[int, int],
        total: int,
        etag: str,
        into: memoryview,
        progress_timeout: float,
    ) -> dict[str, Any]:
        """Bytes ``[start, end)`` of the object straight into ``into`` (exactly that long).

        Pinned to one version: ``If-Match`` on the ETag (or the version id), and the answer's
        ETag and total length are checked too, for servers that ignore ``If-Match``; another
        version raises :class:`VersionMismatch`. No deadline for the body as a whole: a wait
        of ``progress_timeout`` seconds without a byte raises (the caller retries).
        Returns the answer's headers under botocore's names.
        """
        start, end = span
        url = f"s3://{bucket}/{key}"
        parts = urllib.parse.urlsplit(self.url(bucket, key, version_id, checksum=False))
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if etag and not version_id:
            headers["If-Match"] = f'"{etag}"'
        resp = self._send(parts, progress_timeout, headers)
        try:
            if resp.status in (412, 416):
                resp.read()
                raise VersionMismatch(f"{url}: HTTP {resp.status} for bytes {start}-{end - 1}")
            if resp.status not in (200, 206):
                _refuse(resp, url)
            got = {k.lower(): v for k, v in resp.getheaders()}
            seen = str(got.get("etag", "")).strip('"')
            whole = got.get("content-range", "").rpartition("/")[2]
            if resp.status == 200 and (start, end) != (0, total):
                raise Unsupported("the server ignored the Range header")
            if (etag and seen and seen != etag) or (whole not in ("", "*", str(total))):
                raise VersionMismatch(
                    f"{url}: changed while being read (ETag {etag} -> {seen}, "
                    f"size {total} -> {whole})"
                )
            if int(got.get("content-length", -1)) != end - start:
                raise OSError(
                    f"{url}: {got.get('content-length')} bytes for a range of {end - start}"
                )
            _read_into(resp, into)
        except (Unsupported, FileNotFoundError, ServerError):
            raise  # the answer was read whole: the connection is still good
        except BaseException:
            self._drop_connection(parts.scheme, parts.hostname or "", parts.port)
            raise
        return _as_botocore(got, end - start)

    def _send(
        self,
        parts: urllib.parse.SplitResult,
        wait: float,
        extra: dict[str, str] | None = None,
    ) -> http.client.HTTPResponse:
        """Send the GET and read the answer's head, on this thread's kept-alive connection.

        A server may close an idle connection at any time; if a reused one turns out
        closed before any answer, the request goes once more on a fresh connection rather
        than counting as an origin error.
        """
        where = (parts.scheme, parts.hostname or "", parts.port)
        for attempt in range(2):
            conn = self._connection(*where, wait)
            reused = conn.sock is not None
            try:
                # The presigned URL signs the checksum header too: it must be sent as signed.
                # Range and If-Match are plain headers S3 accepts unsigned.
                headers = _SIGNED_HEADERS if extra is None else extra
                conn.request("GET", f"{parts.path}?{parts.query}", headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop_connection(*where)
                if not reused or attempt:
                    raise
            except BaseException:
                self._drop_connection(*where)
                raise
        raise AssertionError("unreachable")

    def _connection(
        self, scheme: str, host: str, port: int | None, timeout: float | None
    ) -> http.client.HTTPConnection:
        """This thread's keep-alive connection to ``host`` (one per thread and process)."""
        pool = self._pool()
        conn = pool.get((scheme, host, port))
        if conn is None:
            if scheme == "https":
                with self._lock:
                    if self._ssl is None:
                        self._ssl = _ssl_context(self._verify)  # loads the CA bundle: once
                conn = http.client.HTTPSConnection(host, port, context=self._ssl)
            elif scheme == "http":
                conn = http.client.HTTPConnection(host, port)
            else:
                raise Unsupported(f"scheme {scheme!r}")
            pool[(scheme, host, port)] = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop_connection(self, scheme: str, host: str, port: int | None) -> None:
        conn = self._pool().pop((scheme, host, port), None)
        if conn is not None:
            conn.close()

    def _pool(self) -> dict[tuple[str, str, int | None], http.client.HTTPConnection]:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # a forked child opens its own
            local.pid, local.pool = os.getpid(), {}
        pool: dict[tuple[str, str, int | None], http.client.HTTPConnection] = local.pool
        return pool


def _refuse(resp: http.client.HTTPResponse, url: str) -> None:
    """Turn an answer other than 200 into the exception the caller acts on.

    Missing objects and server trouble are answered here; everything else (redirects to
    another region, 400s, 403s: a signature this module got wrong would look like one) goes
    back to s3fs, which reports it in its own words.
    """
    text = resp.read(64 * 1024).decode("utf-8", "replace")
    code = _XML_CODE.search(text)
    what = f"HTTP {resp.status}" + (f" {code.group(1)}" if code else "")
    if resp.status == 404:
        raise FileNotFoundError(f"{url}: {what}")
    if resp.status >= 500 or resp.status == 429:
        raise ServerError(f"{url}: {what}")
    raise Unsupported(what)


def _read_body(resp: http.client.HTTPResponse, length: int, timeout: float | None) -> bytearray:
    """Exactly ``length`` bytes into one buffer; a body that ends early is an error."""
    if length < 0:
        raise Unsupported("no Content-Length")
    deadline = None if timeout is None else time.monotonic() + timeout
    body = bytearray(length)
    view = memoryview(body)
    got = 0
    while got < length:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"body not complete in time ({got} of {length} bytes)")
        n = resp.readinto(view[got:])
        if not n:
            raise http.client.IncompleteRead(bytes(0), length - got)
        got += n
    return body


def _read_into(resp: http.client.HTTPResponse, into: memoryview) -> None:
    """Fill ``into`` from the body; each wait is bounded by the socket's timeout alone."""
    got, length = 0, len(into)
    while got < length:
        n = resp.readinto(into[got:])
        if not n:
            raise http.client.IncompleteRead(bytes(0), length - got)
        got += n


def _as_botocore(headers: dict[str, Any], length: int) -> dict[str, Any]:
    """The response headers the cache checks, under botocore's names."""
    return {
        "ContentLength": length,
        "ETag": headers.get("etag", ""),
        "ChecksumCRC32": headers.get("x-amz-checksum-crc32"),
        "ChecksumType": headers.get("x-amz-checksum-type", "FULL_OBJECT"),
        "ServerSideEncryption": headers.get("x-amz-server-side-encryption", ""),
        "SSECustomerAlgorithm": headers.get("x-amz-server-side-encryption-customer-algorithm"),
        "ContentRange": headers.get("content-range", ""),
    }


async def _frozen_credentials(fs: Any) -> Any:
    """The credentials s3fs signs with: its own key and secret, else its session's chain."""
    from botocore.credentials import ReadOnlyCredentials

    extra = getattr(fs, "client_kwargs", None) or {}
    key = getattr(fs, "key", None) or extra.get("aws_access_key_id")
    if key:
        secret = getattr(fs, "secret", None) or extra.get("aws_secret_access_key")
        token = getattr(fs, "token", None) or extra.get("aws_session_token")
        return ReadOnlyCredentials(key, secret, token)
    creds = await fs.session.get_credentials()
    if creds is None:
        return None
    frozen = creds.get_frozen_credentials()
    return await frozen if inspect.isawaitable(frozen) else frozen


def _ssl_context(verify: Any) -> ssl.SSLContext:
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return ssl.create_default_context()
