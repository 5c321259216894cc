"""The PostgreSQL peer itself: a private cluster on loopback, a database per test."""

from __future__ import annotations

import psycopg

from tests.peers.postgres import PostgresServer


def test_each_test_gets_an_empty_database_on_loopback(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        row = conn.execute(
            "SELECT inet_server_addr()::text, current_setting('port'),"
            " (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')"
        ).fetchone()
    assert row == ("127.0.0.1/32", str(postgres_server.port), 0)
    assert postgres_server.fresh_database() != postgres_dsn
