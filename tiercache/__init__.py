"""tiercache: a tiered cache (RAM, NVMe SSD, object storage) for deep-learning training data.

The entry point is the fsspec filesystem ``tiercache`` (:class:`TierCacheFileSystem`);
``tiercache.torch`` has datasets that read through it.
"""

from .config import Config, ConfigError, load_config
from .fs import TierCacheFileSystem

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "TierCacheFileSystem", "load_config", "__version__"]
