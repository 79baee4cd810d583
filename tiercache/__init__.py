"""tiercache: a tiered cache (RAM, NVMe SSD, object storage) for deep-learning training data.

The entry point is the fsspec filesystem ``tiercache`` (:class:`TierCacheFileSystem`);
``tiercache.torch`` has datasets that read through it.
"""

from importlib import metadata as _metadata

from .dependencies import require as _require

# Before anything imports fsspec or lmdb: an old one gets a message naming it and the
# version needed, not an ImportError or a failed read somewhere later.
_require()

from .config import Config, ConfigError, load_config  # noqa: E402
from .fs import TierCacheFileSystem  # noqa: E402

try:
    #: The installed release, read from package metadata (pyproject.toml's ``version``).
    __version__ = _metadata.version("tiercache")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["Config", "ConfigError", "TierCacheFileSystem", "load_config", "__version__"]
