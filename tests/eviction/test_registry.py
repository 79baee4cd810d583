"""Names and parameters, as a config file gives them, and the errors for wrong ones."""

from __future__ import annotations

import pytest

from tiercache.eviction import (
    REGISTRY,
    EvictionPolicy,
    UnknownPolicyError,
    create_policy,
    policy_from_spec,
    policy_parameters,
)

EXPECTED = {
    "lru", "fifo", "clock", "lfu", "sieve", "s3fifo", "arc", "2q", "wtinylfu", "static", "belady",
}  # fmt: skip


def test_every_algorithm_is_registered_under_its_name() -> None:
    assert set(REGISTRY) == EXPECTED
    for name, cls in REGISTRY.items():
        policy = create_policy(name, 1000)
        assert isinstance(policy, EvictionPolicy) and cls.name == name
        assert set(policy.params()) == set(policy_parameters(name))


def test_module_docstrings_cite_their_papers() -> None:
    import importlib

    for cls in REGISTRY.values():
        doc = importlib.import_module(cls.__module__).__doc__ or ""
        assert any(str(year) in doc for year in range(1966, 2026)), cls.__module__


def test_spec_as_string_and_as_table() -> None:
    assert policy_from_spec("s3fifo", 100).name == "s3fifo"
    policy = policy_from_spec({"name": "s3fifo", "small_ratio": 0.2}, 100)
    assert policy.params()["small_ratio"] == 0.2
    assert policy_from_spec({"name": "2q", "a_in_ratio": 0.3}, 100).params()["a_in_ratio"] == 0.3


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownPolicyError) as info:
        policy_from_spec("lru2", 100)
    message = str(info.value)
    assert "'lru2'" in message and all(name in message for name in EXPECTED)


def test_unknown_parameter_names_it_and_the_valid_ones() -> None:
    with pytest.raises(UnknownPolicyError) as info:
        policy_from_spec({"name": "s3fifo", "small_size": 0.1}, 100)
    message = str(info.value)
    assert "'small_size'" in message and "small_ratio=0.1" in message


def test_bad_parameter_value_is_reported() -> None:
    with pytest.raises(UnknownPolicyError, match="small_ratio"):
        policy_from_spec({"name": "s3fifo", "small_ratio": 1.5}, 100)
    with pytest.raises(UnknownPolicyError, match="fallback"):
        policy_from_spec({"name": "belady", "fallback": "belady"}, 100)


@pytest.mark.parametrize("spec", [{"small_ratio": 0.1}, {"name": 3}, 42, None])
def test_malformed_spec(spec: object) -> None:
    with pytest.raises(UnknownPolicyError, match="name"):
        policy_from_spec(spec, 100)  # type: ignore[arg-type]
