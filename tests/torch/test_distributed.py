"""torchrun with two ranks on gloo: one node cache shared by both ranks and their workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import S3
from tests.torch import helpers
from tests.torch.conftest import TokenData

ROOT = Path(__file__).resolve().parents[2]


def test_torchrun_two_ranks_share_one_node_cache(token_data: TokenData,
                                                 torch_config: dict[str, Any], s3_server: S3,
                                                 tmp_path: Path) -> None:  # fmt: skip
    args = {"url": token_data.url, "options": token_data.options, "config": torch_config,
            "seq": helpers.SEQ, "out": str(tmp_path)}  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    s3_server.start_counting()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "torch" / "ddp_train.py"), json.dumps(args)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    per_shard = helpers.SHARD_TOKENS // helpers.SEQ
    total = token_data.shards * per_shard
    for epoch in range(2):
        # Every sample's first token names it: the ranks split the epoch, nothing twice.
        firsts = [set(r["first_tokens"][epoch]) for r in ranks]
        assert len(firsts[0]) == len(firsts[1]) == total // 2
        assert not firsts[0] & firsts[1]
        want = {int(helpers.expected_sample(token_data.tokens, i)[0]) for i in range(total)}
        assert firsts[0] | firsts[1] == want
    assert ranks[0]["first_tokens"][0] != ranks[0]["first_tokens"][1]  # reshuffled per epoch
    # One node cache: 2 ranks x 2 workers x 2 epochs fetched each shard from S3 once.
    gets = [r for r in s3_server.requests("GET") if "/tokens/" in r.get("url", "")]
    assert len(gets) == token_data.shards
    assert ranks[0]["stats"]["origin"]["reads"] == token_data.shards
