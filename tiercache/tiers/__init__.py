"""Storage tiers: where cached bytes physically live."""

from .store import BlobMeta, CorruptBlobError, TierStore

__all__ = ["BlobMeta", "CorruptBlobError", "TierStore"]
