"""Run by ``torchrun`` in the tests: DDP on gloo, the ranks of a node sharing one node cache,
each reading its share through DataLoader workers. Writes what it saw as JSON.

``--nproc_per_node=2`` on one node (tests/torch), or ``--nnodes=2`` across two network
namespaces (tests/cluster), where the sampler reads the node layout from torchrun."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from tiercache.torch import ShardShuffleSampler, TokenDataset


def main() -> None:
    args = json.loads(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ds = TokenDataset(args["url"], seq_len=args["seq"], storage_options=args["options"],
                      cache=args["config"])  # fmt: skip
    # rank and world from the process group; nodes from torchrun's environment
    sampler = ShardShuffleSampler(ds, seed=7, window=args.get("window", 4))
    loader = DataLoader(ds, batch_size=16, sampler=sampler, num_workers=args.get("workers", 2),
                        persistent_workers=True)  # fmt: skip
    model = DistributedDataParallel(torch.nn.EmbeddingBag(65536, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[list[int]] = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        firsts = []
        for batch in loader:
            loss = model(batch).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            firsts.extend(int(row[0]) for row in batch)
        seen.append(firsts)
    dist.barrier()
    out = {"rank": rank, "world": world, "nodes": sampler.num_nodes, "node": sampler.node_rank,
           "first_tokens": seen, "stats": ds.stats()}  # fmt: skip
    with open(os.path.join(args["out"], f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
