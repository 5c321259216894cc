"""The README's policy table and `tls.policy.TABLE` say the same thing, cell by cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaymail.tls.downgrade import DowngradeKind, Remembered, TlsLevel, below_memory
from relaymail.tls.policy import TABLE, Action, Column, Event, Level, UnreachableCell, decide

README = Path(__file__).resolve().parents[2] / "README.md"

# The README's words, mapped explicitly: rewording either side fails this test.
ROWS = {
    "no STARTTLS advertised (or only HELO works)": Event.NOT_OFFERED,
    "STARTTLS works, certificate verified": Event.VERIFIED,
    "STARTTLS works, certificate not verified": Event.UNVERIFIED,
    "4xx to STARTTLS": Event.TEMPFAIL,
    "5xx to STARTTLS": Event.PERMFAIL,
    "no reply / connection drops after STARTTLS": Event.NO_REPLY,
    "220, then the handshake fails": Event.HANDSHAKE_FAILED,
    "bytes after the 220, before the handshake (response injection)": Event.INJECTION,
    "STARTTLS works, certificate verified, REQUIRETLS not offered after TLS": (
        Event.REQUIRETLS_NOT_OFFERED
    ),
}
COLUMNS = {
    "none": Column.NONE,
    "may, fallback on": Column.MAY_FALLBACK,
    "may, fallback off": Column.MAY_NO_FALLBACK,
    "encrypt": Column.ENCRYPT,
    "verify": Column.VERIFY,
    "dane": Column.DANE,
    "REQUIRETLS message, verify or dane": Column.REQUIRETLS,
}
CELLS: dict[str, Action | None] = {
    "TLS": Action.USE_TLS,
    "clear": Action.CONTINUE_CLEAR,
    "reconnect in clear": Action.RECONNECT_CLEAR,
    "host fails": Action.HOST_FAILS,
    "refused (5.7.30)": Action.REQUIRETLS_REFUSED,
    "-": None,  # cannot happen under that column
}
# The level, tempfail_fallback and REQUIRETLS that select each column.
SETTINGS = {
    Column.NONE: (Level.NONE, True, False),
    Column.MAY_FALLBACK: (Level.MAY, True, False),
    Column.MAY_NO_FALLBACK: (Level.MAY, False, False),
    Column.ENCRYPT: (Level.ENCRYPT, True, False),
    Column.VERIFY: (Level.VERIFY, True, False),
    Column.DANE: (Level.DANE, True, False),
    # Fallback on: REQUIRETLS leaves no fallback of any kind, whatever it says.
    Column.REQUIRETLS: (Level.VERIFY, True, True),
}


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def readme_table(first: str = "remote behaviour") -> tuple[list[str], list[list[str]]]:
    """The header and rows of the table of the README's "TLS policy" section whose first
    header cell is `first`."""
    section = README.read_text(encoding="utf-8").split("\n## TLS policy\n", 1)[1]
    tables: list[list[str]] = [[]]
    for line in section.split("\n## ", 1)[0].splitlines():
        if line.startswith("|"):
            tables[-1].append(line)
        elif tables[-1]:
            tables.append([])
    [(header, rule, *rows)] = [t for t in tables if t and _cells(t[0])[0] == first]
    assert set(_cells(rule)) == {"---"}
    return _cells(header), [_cells(row) for row in rows]


def test_the_readme_table_has_every_event_and_every_column_once():
    header, rows = readme_table()
    assert header[0] == "remote behaviour"
    assert [COLUMNS[name] for name in header[1:]] == list(Column)
    assert sorted((ROWS[row[0]] for row in rows), key=list(Event).index) == list(Event)
    assert all(len(row) == len(header) for row in rows)


def test_every_readme_cell_is_the_code_s_action():
    header, rows = readme_table()
    columns = [COLUMNS[name] for name in header[1:]]
    for label, *cells in rows:
        event = ROWS[label]
        for column, cell in zip(columns, cells, strict=True):
            assert TABLE[event].get(column) is CELLS[cell], (label, column.value, cell)


def test_decide_follows_the_readme_and_refuses_its_dashes():
    header, rows = readme_table()
    columns = [COLUMNS[name] for name in header[1:]]
    for label, *cells in rows:
        for column, cell in zip(columns, cells, strict=True):
            level, fallback, requiretls = SETTINGS[column]
            expected = CELLS[cell]
            if expected is None:
                with pytest.raises(UnreachableCell):
                    decide(level, fallback, ROWS[label], requiretls=requiretls)
            else:
                decision = decide(level, fallback, ROWS[label], requiretls=requiretls)
                assert decision.action is expected, (label, column)


# The downgrade memory's table: what is remembered, by rows; what the session would reach.
REMEMBERED = {"nothing": None, "TLS": TlsLevel.TLS, "verified": TlsLevel.VERIFIED}
REACHED = {
    "session in clear (no STARTTLS, 4xx/5xx to it, reconnect after a failed handshake)": (
        TlsLevel.CLEAR
    ),
    "TLS, certificate not verified": TlsLevel.TLS,
    "TLS, certificate verified": TlsLevel.VERIFIED,
}
MEMORY_CELLS = {
    "as the table": None,
    "host fails: possible STARTTLS stripping": DowngradeKind.STRIPPING,
    "host fails: possible downgrade": DowngradeKind.CERTIFICATE,
}


def test_the_downgrade_memory_table_is_the_code_s_judgement():
    header, rows = readme_table("remembered")
    assert [REACHED[name] for name in header[1:]] == list(TlsLevel)
    assert [REMEMBERED[row[0]] for row in rows] == [None, *list(TlsLevel)[1:]]
    for label, *cells in rows:
        level = REMEMBERED[label]
        remembered = None if level is None else Remembered("d.test", level, 0.0, 0.0)
        for reached, cell in zip(list(TlsLevel), cells, strict=True):
            found = below_memory(remembered, reached)
            assert (found and found.kind) is MEMORY_CELLS[cell], (label, reached, cell)
