"""`relaymail serve` as a real process, for end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

RELAYMAIL = str(Path(sys.executable).parent / "relaymail")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def write_toml(path: Path, sections: dict[str, Any]) -> Path:
    """A small TOML writer for test configs: tables of scalars, lists, and [[listener]]."""
    lines: list[str] = []
    for section, table in sections.items():
        if section == "listener":
            for listener in table:
                lines.append("[[listener]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in listener.items()]
            continue
        lines.append(f"[{section}]")
        lines += [f'"{k}" = {toml_value(v)}' for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    def __init__(
        self,
        config: Path,
        port: int,
        log: Path,
        env: dict[str, str] | None = None,
        options: tuple[str, ...] = (),
        *,
        prefix: tuple[str, ...] = (),
        new_session: bool = False,
    ) -> None:
        """``prefix`` runs the daemon through another command (``prlimit --fsize=...``);
        ``new_session`` gives it a process group of its own (for ``kill_group``)."""
        self.prefix = prefix
        self.new_session = new_session
        self.config = config
        self.port = port
        self.log = log
        self.options = options  # global options, before the command (--log-json)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 15.0) -> None:
        log = self.log.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            *self.prefix, RELAYMAIL, "--log-level", "DEBUG", *self.options, "serve",
            "--config", str(self.config),
            stdout=log, stderr=log, env=self.env, start_new_session=self.new_session,
        )  # fmt: skip
        log.close()
        async with asyncio.timeout(timeout):
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"serve exited {self.process.returncode}: {self.text()}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            # With [server] processes > 1 the first worker answers before the others listen.
            while self.workers() and "worker(s) accept mail" not in self.text():
                if self.process.returncode is not None:
                    raise RuntimeError(f"serve exited {self.process.returncode}: {self.text()}")
                await asyncio.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def stop(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    def workers(self) -> list[int]:
        """The pids of the supervisor's worker processes ([server] processes > 1)."""
        assert self.process is not None
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:  # it has ended
            return []
        return [int(child) for child in children]

    async def kill_group(self) -> None:
        """kill -9 of the supervisor and every worker at once (started with new_session)."""
        assert self.process is not None and self.new_session
        os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()


async def run_command(*args: str, stdin: bytes = b"", timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")
