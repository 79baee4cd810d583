"""The wire format between engines: endpoints, headers and how errors are told apart.

Plain HTTP/1.1 with kept-alive connections. A blob answer is the object's bytes as the owner
stores them, with the facts the receiver checks before it keeps a byte: the CRC32 of the body
(the checksum the owner's tier recorded when the bytes came from the origin), the origin
version they are (ETag or size and mtime) and when they were fetched. While an owner reads
the origin for a request it sends ``100 Continue`` every half second, so a receiver can tell
a slow origin from a dead peer with one short timeout.
"""

from __future__ import annotations

BLOB = "/cluster/v1/blob"
HELLO = "/cluster/v1/hello"
SUSPECT = "/cluster/v1/suspect"

CRC32 = "X-Tiercache-Crc32"  # hex CRC32 of the body
VERSION = "X-Tiercache-Version"  # origin version of the bytes
FETCHED_AT = "X-Tiercache-Fetched-At"  # wall clock when they were read from the origin
CACHE = "X-Tiercache-Cache"  # "hit": served from a tier; "miss": read from the origin first
ORIGIN = "X-Tiercache-Origin"  # the origin as ``origins.spec_of`` names it
NODE = "X-Tiercache-Node"  # the requesting node's address (metrics labels)
WANT_VERSION = "X-Tiercache-Want-Version"  # the version the requester knows to be current
REASON = "X-Tiercache-Reason"  # why an error answer (not-found, origin-error, refused...)

#: How often an owner busy reading the origin tells the requester it is alive.
HEARTBEAT_SECONDS = 0.5


class PeerError(Exception):
    """A peer could not give us the bytes; ``result`` is the metrics label of why.

    ``down``: the peer itself failed (no answer, connection lost): it is marked down. Other
    failures (the origin behind it, a checksum mismatch) say nothing about the peer's health.
    """

    def __init__(self, message: str, result: str, *, down: bool = False) -> None:
        super().__init__(message)
        self.result = result
        self.down = down
