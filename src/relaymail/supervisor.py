"""`relaymail serve` with `[server] processes` above 1: a small supervisor over N workers.

The supervisor does no mail work. It checks what `serve` checks before it
starts (so a broken configuration, a port held by another process or a
second daemon on the queue stop it with the same line and exit status), holds
the queue's daemon lock, then starts N workers: each a fresh interpreter
running `relaymail serve --worker K/N` (a re-exec, never a fork of a running
event loop), which binds every listener with SO_REUSEPORT, drops root as the
single-process daemon does, and serves queue shard K (shards.py). A worker
that dies is started again after a back-off that doubles from 0.5 s to 30 s
(back to 0.5 s once one ran a minute), each restart logged. SIGTERM and
SIGINT are passed on and waited for; SIGHUP is passed on (each worker reloads).

It stays who it was started as: restarting a worker that binds port 25 needs
root, as Postfix's master keeps it. The queue directory and the lock file are
made as `[server] user` (with the effective ids only, given back at once), so
every queue file still belongs to the service user. systemd hears READY=1
from the supervisor (NotifyAccess=main) once every worker accepts mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .daemon_lock import hold_daemon_lock
from .port_holder import listen_failed
from .preflight import PreflightFailed, preflight
from .queue.files import prepare_directory
from .service import lookup_user, notify_systemd

__all__ = ["Supervisor", "WorkerFailed", "die_with_parent"]

log = logging.getLogger("relaymail.daemon")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a worker that ran this long restarts with the shortest back-off
_PR_SET_PDEATHSIG = 1
METRICS_DIRECTORY = "metrics"
# prometheus_client keeps each process's values in files there (read when it is imported,
# so set from the worker's exec on); worker 0 serves their sums (metrics.py).
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


_supervisor: int | None = None  # a worker's parent, as it was at the worker's start


class WorkerFailed(Exception):
    """A worker ended before it accepted mail: its own line is on stderr already."""

    def __init__(self, status: int) -> None:
        super().__init__(f"worker exited with status {status}")
        self.status = status


def die_with_parent() -> None:
    """Have the kernel kill this worker when its supervisor dies (even by kill -9).

    A worker left behind would serve its shard beside the next supervisor's.
    Linux clears this on every change of credentials: call it again after dropping root.
    """
    global _supervisor
    if _supervisor is None:
        _supervisor = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _supervisor:  # it was gone before the call: nothing would kill us
        logging.shutdown()  # what this turn logged, before an exit that flushes nothing
        os._exit(1)


@dataclass
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    backoff: float = BACKOFF_MIN


@dataclass
class Supervisor:
    config: Config
    argv: list[str]  # the global options the command line gave (logging), for the workers
    slots: list[_Slot] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _metrics: Path = Path()  # the workers' metrics files, made anew at each start
    _up: bool = False  # every worker started (and has its signal handlers)
    _reload_pending: bool = False

    @property
    def processes(self) -> int:
        return self.config.server.processes

    async def run(self) -> None:
        if problems := preflight(self.config):
            raise PreflightFailed(problems)
        _check_ports_free(self.config)
        with _as_service_user(self.config):
            prepare_directory(self.config.queue.directory)
            lock = hold_daemon_lock(self.config.queue.directory)
            self._metrics = _fresh_metrics_directory(self.config.queue.directory)
        try:
            # Before the workers: a SIGTERM while they start stops them once they are up.
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
            loop.add_signal_handler(signal.SIGINT, self.stopping.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload)
            self.slots = [_Slot(k) for k in range(self.processes)]
            await asyncio.gather(*(self._start(slot) for slot in self.slots))
            self._up = True
            if self._reload_pending:  # a worker still starting would have died of it
                self._pass_on(signal.SIGHUP)
            notify_systemd(f"READY=1\nSTATUS=accepting mail in {self.processes} worker(s)")
            log.info("supervisor: %d worker(s) accept mail", self.processes)
            watchers = [asyncio.create_task(self._watch(slot)) for slot in self.slots]
            await self.stopping.wait()
            notify_systemd("STOPPING=1")
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        finally:
            await self._stop_all()
            lock.release()
        log.info("supervisor: stopped")

    async def _start(self, slot: _Slot) -> None:
        """Start worker `slot.index` and wait for its READY; WorkerFailed if it ends first."""
        read_end, write_end = os.pipe()
        command = [
            sys.executable, "-m", "relaymail.commands.cli", *self.argv, "serve",
            "--worker", f"{slot.index}/{self.processes}", "--ready-fd", str(write_end),
        ]  # fmt: skip
        if self.config.source is not None:
            command += ["--config", str(self.config.source)]
        try:
            slot.process = await asyncio.create_subprocess_exec(
                *command, pass_fds=(write_end,),
                env={**os.environ, MULTIPROCESS_ENV: str(self._metrics)},
            )  # fmt: skip
        finally:
            os.close(write_end)
        slot.started = time.monotonic()
        try:
            ready = await asyncio.to_thread(os.read, read_end, 1)
        finally:
            os.close(read_end)
        if not ready:  # the pipe closed without a word: the worker ended
            raise WorkerFailed(await slot.process.wait())
        log.debug("supervisor: worker %d (pid %d) accepts mail", slot.index, slot.process.pid)

    async def _watch(self, slot: _Slot) -> None:
        """Start the worker again whenever it ends, after its back-off."""
        while True:
            assert slot.process is not None
            status = await slot.process.wait()
            # Its open-connection gauges end with it; its counters still count.
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(slot.process.pid, str(self._metrics))  # type: ignore[no-untyped-call]
            if time.monotonic() - slot.started >= STABLE_AFTER:
                slot.backoff = BACKOFF_MIN
            log.warning("supervisor: worker %d (pid %d) ended with status %d; starting it"
                        " again in %.1f s", slot.index, slot.process.pid, status,
                        slot.backoff)  # fmt: skip
            await asyncio.sleep(slot.backoff)
            slot.backoff = min(BACKOFF_MAX, slot.backoff * 2)
            try:
                await self._start(slot)
            except WorkerFailed as exc:
                log.warning("supervisor: worker %d did not start (status %d)",
                            slot.index, exc.status)  # fmt: skip

    def _reload(self) -> None:
        if self._up:
            self._pass_on(signal.SIGHUP)
        else:
            self._reload_pending = True

    def _pass_on(self, signum: int) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signum)

    async def _stop_all(self) -> None:
        self._pass_on(signal.SIGTERM)
        running = [s.process for s in self.slots if s.process is not None]
        await asyncio.gather(*(p.wait() for p in running))


def _check_ports_free(config: Config) -> None:
    """ListenFailed for a listener address another process holds.

    Workers bind with SO_REUSEPORT, which another process of the same user that
    set it too would share without an error: a plain bind first tells.
    """
    for settings in config.listeners():
        try:
            infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)  # fmt: skip
        except OSError as exc:
            raise listen_failed(settings.host, settings.port, exc) from None
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    probe.bind(address)
                except OSError as exc:
                    raise listen_failed(settings.host, settings.port, exc) from None


def _fresh_metrics_directory(queue_directory: Path) -> Path:
    """`<queue>/metrics`, emptied: the counters of the last run are not this one's."""
    directory = queue_directory / METRICS_DIRECTORY
    directory.mkdir(mode=0o700, exist_ok=True)
    for old in directory.glob("*.db"):
        old.unlink()
    return directory


@contextlib.contextmanager
def _as_service_user(config: Config) -> Iterator[None]:
    """Make files as `[server] user` when root: the effective ids, given back on exit."""
    name = config.server.user
    if name is None or os.geteuid() != 0:
        yield
        return
    user = lookup_user(name)
    os.setegid(user.gid)
    os.seteuid(user.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
