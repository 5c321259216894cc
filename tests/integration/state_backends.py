"""`state_queue`: queue settings for each state backend, so one test runs against both.

SQLite: a directory of the test's own. PostgreSQL: an empty database of the test's own on
the session's private cluster (tests/peers/postgres.py), with the SQLite directory still
set, as a node keeps its maildrop and pid file there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from relaymail.config_queue import QueueBackend, QueueSettings

BACKENDS = [QueueBackend.SQLITE, QueueBackend.POSTGRESQL]


def settings_for(
    backend: QueueBackend, directory: Path, dsn: str | None, node: str = "a"
) -> QueueSettings:
    if backend is QueueBackend.SQLITE:
        return QueueSettings(directory=directory, node=node)
    return QueueSettings(directory=directory, backend=backend, dsn=dsn, node=node)


@pytest.fixture(params=BACKENDS, ids=[b.value for b in BACKENDS])
def state_backend(request: pytest.FixtureRequest) -> QueueBackend:
    backend: QueueBackend = request.param
    return backend


@pytest.fixture
def state_queue(
    request: pytest.FixtureRequest, state_backend: QueueBackend, tmp_path: Path
) -> QueueSettings:
    """Where the state lives, for `state_backend`."""
    dsn = None
    if state_backend is QueueBackend.POSTGRESQL:
        dsn = request.getfixturevalue("postgres_dsn")
    return settings_for(state_backend, tmp_path / "queue", dsn)
