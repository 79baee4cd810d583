"""``[write]``: defaults, and bad values refused with the key named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_config
from tiercache.config import ConfigError, load_config


def test_defaults_stage_beside_the_last_tier(cache_dirs: dict[str, Path]) -> None:
    config = load_config(make_config(cache_dirs))
    write = config.write
    assert write is not None and write.mode == "write-back" and write.enabled
    last = config.tiers[-1].path
    assert write.path == last.with_name(f"{last.name}-write")  # not inside: never cleared
    assert write.part_size == 32 << 20 and write.upload_concurrency == 8


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"part_size": "1MiB"}, "write.part_size = 1048576 is invalid; between 5MiB and 5GiB"),
        ({"mode": "later"}, "write.mode = 'later' is invalid; one of write-back"),
        ({"capacity": "lots"}, "write.capacity = 'lots' is not a size"),
        ({"upload_concurrency": 0}, "write.upload_concurrency = 0 is invalid"),
        ({"colour": "blue"}, "unknown key write.colour"),
    ],
)
def test_bad_values_name_the_key(
    cache_dirs: dict[str, Path], section: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(make_config(cache_dirs, write=section))
