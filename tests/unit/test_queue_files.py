"""The queue files' check: a read looks at the WAL index only, a write at every file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaymail.errors import QueueUnavailable
from relaymail.queue.files import FileProblem, QueueFiles
from relaymail.queue.schema import open_database


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[tuple[Path, QueueFiles]]:
    db_path, conn = open_database(tmp_path, None, 1.0, check_same_thread=True)
    conn.execute("CREATE TABLE t (x)")  # a write: the -wal and -shm files exist
    conn.execute("INSERT INTO t VALUES (1)")
    files = QueueFiles(db_path)
    yield db_path, files
    files.close()
    conn.close()


def _swap(path: Path) -> Path:
    """Put another file at `path`; returns where the original went."""
    aside = path.with_name(path.name + ".aside")
    os.replace(path, aside)
    path.write_bytes(aside.read_bytes())
    return aside


def test_a_read_is_refused_only_for_the_index_and_a_write_for_any_file(
    queue: tuple[Path, QueueFiles],
) -> None:
    db_path, files = queue
    aside = _swap(db_path)
    files.verify(shm_only=True)  # reading a replaced database is harmless
    with pytest.raises(QueueUnavailable, match="was replaced"):
        files.verify()
    files.verify(shm_only=True)  # and a read does not clear the writer's fault
    fault = files.check()
    assert fault is not None and (fault.path, fault.problem) == (db_path, FileProblem.REPLACED)
    os.replace(aside, db_path)
    files.verify()
    assert files.check() is None


def test_a_replaced_index_refuses_reads_until_it_is_back(queue: tuple[Path, QueueFiles]) -> None:
    db_path, files = queue
    shm = Path(f"{db_path}-shm")
    aside = _swap(shm)
    for _ in range(2):  # refused each time, said once
        with pytest.raises(QueueUnavailable, match="-shm was replaced"):
            files.verify(shm_only=True)
    wal_aside = _swap(Path(f"{db_path}-wal"))
    os.replace(aside, shm)
    files.verify(shm_only=True)  # the index is back: reads go on, the WAL is the writer's
    with pytest.raises(QueueUnavailable, match="-wal was replaced"):
        files.verify()
    os.replace(wal_aside, Path(f"{db_path}-wal"))
    files.verify()
    files.verify(shm_only=True)
