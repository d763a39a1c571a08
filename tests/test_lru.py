"""The one per-shape cache (far_runtime.lru.LRU) that the ORT workspace, the GPU slots, the
thread results and the CUDA-graph cache all use."""
import pytest

from far_runtime.lru import LRU


def test_least_recently_used_goes_first_and_is_released():
    released = []
    c = LRU(2, lambda k, v: released.append((k, v)))
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1            # "a" is now the most recent
    c.put("c", 3)
    assert released == [("b", 2)] and c.keys() == ["a", "c"] and c.evictions == 1


def test_get_or_make_makes_once():
    made = []
    c = LRU(3)
    for _ in range(3):
        assert c.get_or_make("k", lambda: made.append(1) or "v") == "v"
    assert made == [1] and len(c) == 1


def test_reserve_grows_only_and_pop_does_not_release():
    released = []
    c = LRU(1, lambda k, v: released.append(k))
    c.reserve(3)
    c.reserve(2)
    assert c.capacity == 3
    for k in "xyz":
        c.put(k, k)
    assert released == [] and c.pop("y") == "y" and "y" not in c and released == []
    c.clear()
    assert released == ["x", "z"] and len(c) == 0


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        LRU(0)
