"""Queue shards and the workers' shares of the daemon-wide limits: pure rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaymail.config import parse_config
from relaymail.errors import ConfigError
from relaymail.queue.ids import ID_SHARDS, shard_id
from relaymail.shards import default_processes, present_shards, share, worker_shards
from relaymail.worker_limits import worker_config, worker_listener


@pytest.mark.parametrize("total", [1, 2, 3, 7, 20, 200, 201])
@pytest.mark.parametrize("parts", [1, 2, 3, 8])
def test_shares_add_up_to_the_total_and_none_is_zero(total: int, parts: int) -> None:
    shares = [share(total, parts, k) for k in range(parts)]
    assert min(shares) >= 1
    assert sum(shares) == max(total, parts)  # above the total only where it is below N
    assert max(shares) - min(shares) <= 1


def test_a_worker_gets_its_share_of_every_daemon_wide_limit() -> None:
    config = parse_config({
        "queue": {"max_deliveries": 201, "max_size": "10M"},
        "delivery": {"destination_concurrency": 5},
        "recipient_verification": {"max_probes": 10},
        "shaping": {"*": {"max_connections": 4},
                    "gmail.com": {"max_messages_per_minute": 300, "max_messages_per_connection": 7},
                    "mx:.google.com": {"max_connections": 3}},
    })  # fmt: skip
    workers = [worker_config(config, k, 2) for k in range(2)]
    assert [w.queue.max_deliveries for w in workers] == [101, 100]
    assert sum(w.queue.max_size or 0 for w in workers) == 10 * 1024 * 1024
    assert [w.delivery.destination_concurrency for w in workers] == [3, 2]
    assert [w.recipient_verification.max_probes for w in workers] == [5, 5]
    assert [w.shaping.default.max_connections for w in workers] == [2, 2]
    gmail = [w.shaping.domains["gmail.com"] for w in workers]
    assert [g.max_messages_per_minute for g in gmail] == [150, 150]
    assert [g.max_messages_per_connection for g in gmail] == [7, 7]  # per session: whole
    assert [w.shaping.groups[0][1].max_connections for w in workers] == [2, 1]
    assert worker_config(config, 0, 1) is config


def test_a_worker_gets_its_share_of_a_listeners_connections_and_whole_client_limits() -> None:
    config = parse_config({"listener": [{
        "address": "127.0.0.1:2525", "max_connections": 9, "max_connections_per_client": 3,
        "max_recipients": 50,
    }]})  # fmt: skip
    [listener] = config.listeners()
    shares = [worker_listener(listener, k, 2) for k in range(2)]
    assert [s.max_connections for s in shares] == [5, 4]
    # Each client's connections all go to one worker (inbound/steering.py): whole there.
    assert [s.client_limits for s in shares] == [listener.client_limits] * 2
    assert [s.max_recipients for s in shares] == [50, 50]  # per session: whole


def test_processes_is_a_count_from_1_and_defaults_to_the_cpus() -> None:
    assert parse_config({}).server.processes == default_processes() >= 1
    assert parse_config({"server": {"processes": 3}}).server.processes == 3
    for bad in (0, 257, True, 1.5, "2"):
        with pytest.raises(ConfigError) as caught:
            parse_config({"server": {"processes": bad}})
        assert caught.value.key == "server.processes"


def test_each_shard_issues_ids_of_its_own_residue_in_order() -> None:
    for shard in (0, 1, 5, 255):
        last = 1_700_000_000_000_000
        for _ in range(300):
            issued = shard_id(last + 1, shard)
            assert issued > last and issued % ID_SHARDS == shard
            last = issued


def _shard(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "queue.db").write_bytes(b"")
    return directory


def test_a_shard_at_or_beyond_n_is_adopted_by_worker_k_mod_n(tmp_path: Path) -> None:
    _shard(tmp_path)
    for k in (1, 2, 3, 5):
        _shard(tmp_path / f"shard-{k}")
    (tmp_path / "shard-4").mkdir()  # no queue in it: nothing to serve
    (tmp_path / "shard-07").mkdir()  # not a shard's name
    assert present_shards(tmp_path) == (0, 1, 2, 3, 5)
    zero, one = (worker_shards(tmp_path, k, 2) for k in range(2))
    assert (zero.directory, zero.adopted) == (tmp_path, (tmp_path / "shard-2",))
    assert one.directory == tmp_path / "shard-1"
    assert one.adopted == (tmp_path / "shard-3", tmp_path / "shard-5")
    alone = worker_shards(tmp_path, 0, 1)
    assert alone.adopted == tuple(tmp_path / f"shard-{k}" for k in (1, 2, 3, 5))
