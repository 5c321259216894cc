"""The capped cache behind the per-destination caches (TLSA, MTA-STS, downgrade memory)."""

from __future__ import annotations

from relaymail.expiring import ExpiringMap


def test_an_entry_is_there_until_it_expires() -> None:
    cache: ExpiringMap[str, int] = ExpiringMap()
    cache.put("a.example", 1, until=10.0, now=0.0)
    assert (cache.get("a.example", 9.9), cache.get("a.example", 10.0)) == (1, None)
    assert len(cache) == 0  # the expired entry was dropped when it was asked for


def test_past_the_cap_expired_entries_go_first_then_the_oldest() -> None:
    cache: ExpiringMap[int, str] = ExpiringMap(max_entries=3)
    cache.put(1, "short", until=5.0, now=0.0)
    cache.put(2, "old", until=100.0, now=0.0)
    cache.put(3, "new", until=100.0, now=1.0)
    cache.put(4, "newer", until=100.0, now=6.0)  # 1 has expired: it makes the room
    assert [cache.get(k, 6.0) for k in (1, 2, 3, 4)] == [None, "old", "new", "newer"]
    cache.put(5, "newest", until=100.0, now=7.0)  # none expired: the oldest (2) goes
    assert [cache.get(k, 7.0) for k in (2, 3, 4, 5)] == [None, "new", "newer", "newest"]
    assert len(cache) == 3


def test_putting_a_key_again_renews_it_and_pop_forgets_it() -> None:
    cache: ExpiringMap[str, int] = ExpiringMap(max_entries=2)
    cache.put("a", 1, until=100.0, now=0.0)
    cache.put("b", 2, until=100.0, now=0.0)
    cache.put("a", 3, until=100.0, now=1.0)  # now the newest
    cache.put("c", 4, until=100.0, now=2.0)
    assert [cache.get(k, 2.0) for k in ("a", "b", "c")] == [3, None, 4]
    cache.pop("a")
    cache.pop("missing")
    assert cache.get("a", 2.0) is None
