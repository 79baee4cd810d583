"""Torch datasets and samplers that read training data through tiercache.

    from tiercache.torch import TokenDataset, ShardShuffleSampler
    ds = TokenDataset("s3://bucket/tokens/", seq_len=2048, cache="training")
    loader = DataLoader(ds, batch_size=64, sampler=ShardShuffleSampler(ds, seed=0),
                        num_workers=2)

Datasets pickle to a URL, storage options and a cache config, and open the filesystem
lazily in each worker (fork or spawn). Samplers pass each epoch's order to the cache as a
hint, so the engine prefetches exactly what comes next. See docs/torch.md.
"""

from ..dependencies import require, require_torch_numpy_pair

require("torch")  # before torch is imported: an old torch or numpy is named, not a crash
require_torch_numpy_pair()

from .base import ShardedDataset  # noqa: E402
from .files import FileDataset  # noqa: E402
from .records import RecordDataset, write_shards  # noqa: E402
from .sampler import HintedSampler, ShardShuffleSampler, shard_shuffle_order  # noqa: E402
from .source import Source  # noqa: E402
from .tokens import TokenDataset, write_tokens  # noqa: E402
from .wait import DataWaitMeter  # noqa: E402

__all__ = [
    "DataWaitMeter",
    "FileDataset",
    "HintedSampler",
    "RecordDataset",
    "ShardShuffleSampler",
    "ShardedDataset",
    "Source",
    "TokenDataset",
    "shard_shuffle_order",
    "write_shards",
    "write_tokens",
]
