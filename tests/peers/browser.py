"""Debian's Chromium, headless, as the browser that loads the admin pages.

One run loads a URL and gives back the DOM after rendering (`--dump-dom`), a screenshot,
and the page's console messages: with `--enable-logging=stderr` Chromium logs each one,
Content-Security-Policy violations included, as a `CONSOLE` line on stderr.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tests.peers.binaries import peer_binary

_CONSOLE = re.compile(r":CONSOLE(?::|\()\d+\)?\] (.*)$", re.M)


@dataclass(frozen=True)
class Rendered:
    dom: str  # the document as rendered, serialized
    console: tuple[str, ...]  # every console message the page produced
    screenshot: Path


async def render(url: str, workdir: Path, timeout: float = 90.0) -> Rendered:
    workdir.mkdir(parents=True, exist_ok=True)
    screenshot = workdir / "status.png"
    process = await asyncio.create_subprocess_exec(
        peer_binary("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={workdir / 'profile'}", "--enable-logging=stderr",
        "--v=0", "--window-size=1280,2400", "--dump-dom", f"--screenshot={screenshot}", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    log = err.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"chromium exited {process.returncode}: {log[-2000:]}")
    return Rendered(out.decode(), tuple(_CONSOLE.findall(log)), screenshot)


class _Cells(HTMLParser):
    """Text by element id, and the rows of each table by its id (cells as plain text)."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of the elements open
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element_id = dict(attrs).get("id")
        if tag in _VOID:
            return
        self._open.append((tag, element_id))
        if element_id is not None:
            self.text.setdefault(element_id, "")
        if tag == "table" and element_id:
            self._table = element_id
            self.tables[element_id] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._table and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._table and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None
        if any(open_tag == tag for open_tag, _ in self._open):
            while self._open.pop()[0] != tag:
                pass

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass  # <rect/>, <line/>: no text inside

    def handle_data(self, data: str) -> None:
        for _, element_id in self._open:
            if element_id is not None:
                self.text[element_id] += data
        if self._cell is not None:
            self._cell.append(data)


_VOID = {"meta", "link", "br", "img", "input", "hr", "rect", "line"}


def page_parts(dom: str) -> tuple[dict[str, str], dict[str, list[list[str]]]]:
    """(text by element id, rows of cells by table id) of a rendered page."""
    parser = _Cells()
    parser.feed(dom)
    return {k: " ".join(v.split()) for k, v in parser.text.items()}, parser.tables
