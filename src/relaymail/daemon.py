"""`relaymail serve`: the listeners, the queue, the scheduler and the engine on one loop.

Start-up order matters for "never lose a message": the queue is opened and
its pending mail scheduled before any listener accepts new mail; shutdown
runs the other way round (stop accepting, let deliveries finish or abandon
them safely, then close the queue, which drains its last commits).

Before the queue, the listeners are bound (not yet accepting) and, with
`[server] user`, root is dropped (relaymail.service): the ports may need root,
the queue must be opened, and its files created, by the service user only.
Once the listeners accept, systemd hears READY=1.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import observe
from .admin.history import DeliveryHistory
from .admin.settings import load_token
from .config import Config, load_config
from .config_queue import QueueBackend
from .daemon_lock import WORKER_FILENAME, DaemonLock, hold_daemon_lock
from .delivery import DeliveryEngine, RecipientResult
from .destination_share import SharedDestinations
from .dkim.sign import Signer, Signing, SignOutcome, load_signer
from .errors import ConfigError, ListenFailed
from .inbound import ListenerHandle, server_tls_context, start_listener
from .inbound.pickup import Pickup, open_maildrop
from .inbound.recipient_verification import RecipientVerifier
from .local import AliasTable, merged
from .message import Envelope, Origin
from .message_data import MessageData
from .metrics import Metrics
from .port_holder import listen_failed
from .preflight import PreflightFailed, check_server_config, preflight
from .queue.opening import open_store
from .queue.sharded import QueueView, ShardedQueue
from .queue.sqlite import SqliteStore
from .queue.sqlite_adopt import adopt_shard
from .queue.store import Store, TraceHeader
from .scheduler import Scheduler
from .service import become, host_name_problem, lookup_user, notify_systemd
from .shards import WorkerShards, shard_directory, worker_shards
from .supervisor import die_with_parent
from .suspension import Suspension
from .suspension_file import SuspendedEntry, entries, read_all_suspended
from .worker_limits import worker_config, worker_listener

log = logging.getLogger("relaymail.daemon")

# How long in-flight SMTP sessions and deliveries may take to finish on SIGTERM.
SHUTDOWN_GRACE = 20.0
# How often to look for TLS reports due (they cover whole UTC days).
REPORT_INTERVAL = 3600.0
# How long a worker waits for its shard while a worker of a killed supervisor ends.
SHARD_LOCK_WAIT = 10.0


async def _retire(engine: DeliveryEngine, running: list[asyncio.Task[None]]) -> None:
    """Close an engine replaced by a reload once the deliveries it carries are done."""
    if running:
        await asyncio.wait(running)
    await engine.close()


@dataclass
class Daemon:
    config: Config
    listeners: list[ListenerHandle] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Fed by the same events as the log (observe/); the admin listener serves its registry.
    metrics: Metrics = field(default_factory=Metrics)
    signer: Signer = field(default_factory=lambda: Signer({}, {}))  # keys read in run()
    _retiring: asyncio.Task[None] | None = None
    # Root was given up: listeners on privileged ports cannot be bound again.
    _dropped_root: bool = False
    _admin_token: str | None = None  # [admin] token_file's token, re-read on reload
    # Worker `worker` of `processes` (supervisor.py); 1: the whole daemon in this process.
    # Worker 0 alone does what must happen once: the maildrop, TLS reports, [admin].
    worker: int = 0
    processes: int = 1
    # A worker says READY on this pipe to its supervisor; without one, systemd is told.
    ready_fd: int | None = None
    # What the admin listener reads: every worker's shard (the others opened as they appear).
    _queue_view: ShardedQueue | None = None

    def _notify(self, state: str) -> None:
        if self.ready_fd is None:
            notify_systemd(state)
        elif state.startswith("READY=1"):
            os.write(self.ready_fd, b"1")
            os.close(self.ready_fd)
            self.ready_fd = None

    def _suspensions(self) -> list[Suspension]:
        scheduler: Scheduler | None = self.__dict__.get("scheduler")  # None before it starts
        return scheduler.suspensions() if scheduler is not None else []

    def _suspended(self) -> list[SuspendedEntry]:
        """Every worker's suspensions: this one's memory, or what each wrote in its shard."""
        if self.processes == 1:
            return entries(self._suspensions())
        return read_all_suspended(self.config.queue.directory, time.time())

    async def run(self) -> None:
        self.metrics.watch_suspensions(lambda: len(self._suspended()))
        unsubscribe = observe.subscribe(self.metrics.observe)
        try:
            await self._run()
        finally:
            unsubscribe()

    async def _run(self) -> None:
        self.config = config = worker_config(self.config, self.worker, self.processes)
        if problems := preflight(config):
            raise PreflightFailed(problems)
        if self.worker == 0 and (problem := host_name_problem(config.delivery.helo_name)):
            log.warning(
                "helo_name %r %s: other servers may refuse or score the mail;"
                " set [delivery] helo_name to this host's public name",
                config.delivery.helo_name, problem,
            )  # fmt: skip
        self.aliases = AliasTable.open(config.local)
        self.verifier = RecipientVerifier.for_config(
            config.recipient_verification, self._verify_recipient, config.queue.directory
        )
        await self._start_listeners(config, serving=False)
        try:
            if config.server.user is not None:
                self._dropped_root = become(lookup_user(config.server.user))
                if self.processes > 1:
                    die_with_parent()  # again: the change of ids cleared it
            # As the service user: a key it cannot read now would fail the next reload.
            self.signer = load_signer(config)
            os.umask(0o077)  # the queue directory is traversable for the maildrop (open_maildrop)
            if config.queue.backend is QueueBackend.SQLITE:
                shards = worker_shards(config.queue.directory, self.worker, self.processes)
            else:  # one shared database: each worker claims for itself, nothing to adopt
                shards = WorkerShards(
                    self.worker, shard_directory(config.queue.directory, self.worker), ()
                )
            store = open_store(config.queue, shards.directory, self.worker, self.processes)
        except BaseException:
            await asyncio.gather(*(h.close(0) for h in self.listeners))
            raise
        try:
            locks = self._lock_shards(shards)
            for source in shards.adopted:  # none on PostgreSQL (above)
                assert isinstance(store, SqliteStore)
                moved = await adopt_shard(source, store)
                log.info("queue %s: %d message(s) moved in from %s",
                         shards.directory, moved, source)  # fmt: skip
        except BaseException:
            await asyncio.gather(store.close(), *(h.close(0) for h in self.listeners))
            raise
        engine = DeliveryEngine(config)
        history: DeliveryHistory | None = None
        shared: SharedDestinations | None = None
        try:
            # Down and throttling destinations, shared with the other nodes (or processes).
            shared = SharedDestinations(config.queue, config.queue.node)
            # The history is read by the status page only: without [admin] it is not kept.
            history = DeliveryHistory(config.queue.directory) if config.admin else None
            admin = await self._start_admin(config, store, history) if self.worker == 0 else None
        except BaseException:
            for opened in (history, shared):
                if opened is not None:
                    opened.close()
            await store.close()
            for lock in locks:
                lock.release()
            await asyncio.gather(*(h.close(0) for h in self.listeners))
            raise
        self.scheduler = Scheduler(
            store, engine, config.queue, hostname=config.delivery.helo_name, history=history,
            suspended_to=shards.directory, shared=shared,
        )  # fmt: skip
        try:
            pending = self.scheduler.load()
            log.info("queue %s: %d message(s) waiting", _where(config, shards.directory), pending)
            background = [
                asyncio.create_task(self.scheduler.run()),
                asyncio.create_task(shared.run()),
                *([asyncio.create_task(history.run())] if history else []),
            ]
            picking: asyncio.Task[None] | None = None
            if self.worker == 0:
                maildrop = open_maildrop(config.queue.directory)
                background.append(asyncio.create_task(self._send_tls_reports()))
                # Trusted to set the sender (-f): root and the daemon's own user.
                pickup = Pickup(maildrop, self._spool, store, lambda: self.config,
                                frozenset({0, os.geteuid()}))  # fmt: skip
                picking = asyncio.create_task(pickup.run())
            for handle in self.listeners:
                await handle.start_serving()
            self._install_signals()
            self._notify(f"READY=1\nSTATUS=accepting mail, {pending} message(s) queued")
            await self.stopping.wait()
            self._notify("STOPPING=1")
            log.info("stopping: no new mail accepted; finishing deliveries")
            if admin is not None:
                admin.close()
            await asyncio.gather(*(h.close(SHUTDOWN_GRACE) for h in self.listeners))
            await self.verifier.close()
            if picking is not None:
                picking.cancel()  # a file being queued stays; its name says if it was
                await asyncio.gather(picking, return_exceptions=True)
            await self.scheduler.stop(SHUTDOWN_GRACE)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.scheduler.engine.close()
            if self._retiring is not None:
                await self._retiring
        finally:
            if admin is not None:
                admin.close()
            if history is not None:
                history.close()
            shared.close()
            if self._queue_view is not None:
                await self._queue_view.close()
            await store.close()
            for lock in locks:
                lock.release()
        log.info("stopped")

    def _lock_shards(self, shards: WorkerShards) -> list[DaemonLock]:
        """The queue's daemon lock, or, for a worker, a lock on each shard it serves."""
        locks: list[DaemonLock] = []
        try:
            if self.processes == 1:
                locks.append(hold_daemon_lock(self.config.queue.directory))
            owned = shards.adopted if self.processes == 1 else (shards.directory, *shards.adopted)
            for directory in owned:
                locks.append(hold_daemon_lock(directory, WORKER_FILENAME, SHARD_LOCK_WAIT))
        except BaseException:
            for lock in locks:
                lock.release()
            raise
        return locks

    async def _start_admin(
        self, config: Config, store: Store, history: DeliveryHistory | None
    ) -> asyncio.Server | None:
        """The metrics and status page listener ([admin]), when an address is set."""
        settings = config.admin
        if settings is None or history is None:
            return None
        from .admin.app import AdminApp
        from .admin.http import listen
        from .admin.queue_gauges import QueueGauges

        registry = self.metrics.registry
        queue: QueueView = store
        if isinstance(store, SqliteStore):  # the other shards' files beside ours
            self._queue_view = queue = ShardedQueue(config.queue.directory, {0: store})
        registry.register(QueueGauges(queue))
        self._admin_token = load_token(settings)
        app = AdminApp(
            queue, history, registry,
            hostname=lambda: self.config.delivery.helo_name, token=lambda: self._admin_token,
            suspended=self._suspended,
        )  # fmt: skip
        try:
            server = await listen(settings.host, settings.port, app)
        except OSError as exc:
            raise listen_failed(settings.host, settings.port, exc) from None
        log.info("admin listener on %s (metrics, status page)%s", settings,
                 "" if self._admin_token is None else "; token required")  # fmt: skip
        return server

    async def _send_tls_reports(self) -> None:
        """RFC 8460: once a day, yesterday's TLS report to each domain that asks for one.

        Checked hourly; what was sent is recorded, so a restart does not resend.
        """
        from .tls.reporting import TlsReportStore, send_daily_reports

        while True:
            tls = self.config.tls
            if tls.reporting:
                name = self.config.delivery.helo_name
                yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
                store = TlsReportStore(self.config.queue)
                try:
                    outcomes = await send_daily_reports(
                        store, yesterday, self.scheduler.engine.resolver,
                        functools.partial(self._spool, origin=Origin.LOCAL),
                        organization_name=tls.report_organization or name, submitter=name,
                        contact_info=tls.report_contact or f"postmaster@{name}",
                        node=self.config.queue.node,
                    )  # fmt: skip
                    for outcome in outcomes:
                        log.info("TLS report for %s: %s", yesterday, outcome)
                    await store.db.run(store.prune, yesterday - dt.timedelta(days=14))
                except Exception:  # a report is never worth the daemon
                    log.exception("sending TLS reports failed; trying again in an hour")
                finally:
                    store.close()
            await asyncio.sleep(REPORT_INTERVAL)

    async def _spool(
        self,
        envelope: Envelope,
        data: bytes | MessageData,
        trace: TraceHeader | None = None,
        *,
        origin: Origin,
        pickup: str | None = None,
        arrived: float | None = None,
    ) -> str:
        """Every front door's way into the queue: aliases expanded and DKIM signed here, once."""
        found = self.aliases.expansions(envelope.recipients)
        changed = [e for e in found if e.changed]
        if changed:
            dsn = envelope.dsn_request.expanded((e.original, e.recipients) for e in found)
            envelope = Envelope(envelope.sender, merged(found), envelope.requiretls, dsn)
        signing = await self._dkim_sign(data, origin)
        if signing.signatures:
            if isinstance(data, MessageData):
                data.prepend(signing.signatures)
            else:
                data = signing.signatures + data
        queue_id = await self.scheduler.enqueue(
            envelope, data, trace, pickup=pickup, arrived=arrived
        )
        _log_signing(queue_id, signing)
        # The queue keeps the original recipient as the ORCPT; the log line says more.
        for expansion in changed:
            observe.emit(observe.Expanded(queue_id, expansion.original, expansion.recipients))
        return queue_id

    async def _verify_recipient(self, address: str, sender: str) -> RecipientResult:
        # The engine of the moment: a reload replaces it.
        return await self.scheduler.engine.verify_recipient(address, sender)

    async def _dkim_sign(self, data: bytes | MessageData, origin: Origin) -> Signing:
        """The queue entry's DKIM step: before the store prepends our Received: header."""
        signer = self.signer
        if not signer.may_sign(origin):
            return Signing(SignOutcome.NOT_OURS)

        def sign() -> Signing:  # dkimpy hashes the whole message: read and signed off the loop
            return signer.sign(data.read() if isinstance(data, MessageData) else data, origin)

        return await asyncio.to_thread(sign)

    async def _start_listeners(self, config: Config, *, serving: bool = True) -> None:
        users = config.users()
        started: list[ListenerHandle] = []
        try:
            for whole in config.listeners():
                settings = worker_listener(whole, self.worker, self.processes)
                handle = await start_listener(
                    settings, self._spool, users, server_tls_context(settings), self.aliases,
                    verifier=self.verifier, start_serving=serving,
                    spool_directory=config.queue.directory, processes=self.processes,
                )  # fmt: skip
                started.append(handle)
        except OSError as exc:
            for handle in started:
                await handle.close(0)
            raise listen_failed(settings.host, settings.port, exc) from None
        self.listeners = started

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))

    async def reload(self) -> None:
        """SIGHUP: take a new configuration, or keep the running one and say why not."""
        if self.config.source is None:
            log.warning("reload: running on the embedded defaults; nothing to reload")
            return
        try:
            new = worker_config(load_config(self.config.source), self.worker, self.processes)
            check_server_config(new)
            aliases = AliasTable.open(new.local)
            self.verifier.adopt(new.recipient_verification)
            token = load_token(new.admin) if new.admin is not None else None
            signer = load_signer(new)  # new keys (a rotation) or the same ones read again
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        if new.queue.directory != self.config.queue.directory:
            log.warning("reload: queue.directory changes only with a restart")
        if new.server != self.config.server:
            log.warning("reload: server.user and server.processes change only with a restart")
        if new.admin != self.config.admin:
            log.warning("reload: admin.address and admin.token_file change only with a restart")
        else:
            self._admin_token = token  # the same file, perhaps a new token in it
        listeners_change = (new.listener_tables, new.user_table) != (
            self.config.listener_tables,
            self.config.user_table,
        ) or new.delivery.helo_name != self.config.delivery.helo_name
        if listeners_change and self._dropped_root:
            # The service user may not bind port 25 again, and the old sockets
            # would be gone by the time that shows: keep the running listeners.
            log.warning("reload: listener changes need a restart after dropping root")
            kept = replace(new.delivery, helo_name=self.config.delivery.helo_name)
            new = replace(new, listener_tables=self.config.listener_tables,
                          user_table=self.config.user_table, delivery=kept)  # fmt: skip
            listeners_change = False
        log.debug("reload: new configuration accepted")
        old_engine = self.scheduler.engine
        self.scheduler.engine = DeliveryEngine(new)
        self.scheduler.settings = new.queue
        if listeners_change:
            old = self.listeners
            log.debug("reload: closing %d listener(s)", len(old))
            await asyncio.gather(*(h.close(SHUTDOWN_GRACE) for h in old))
            try:
                await self._start_listeners(new)
            except ListenFailed as exc:
                log.error("reload: new listeners failed (%s); restoring the old ones", exc)
                await self._start_listeners(self.config)
                return
        else:
            # Renewed files under the same names (a certbot deploy hook): new handshakes
            # get them although the configuration did not change.
            for handle in self.listeners:
                handle.reload_certificate()
        self.config = new
        self.aliases.adopt(aliases)
        self.signer = signer
        running = self.scheduler.in_flight()
        self._retiring = asyncio.create_task(_retire(old_engine, running))
        log.info("reloaded %s", new.source)


def _where(config: Config, shard: Path) -> str:
    """The queue as the log names it: this worker's shard, or the database and this node."""
    settings = config.queue
    if settings.backend is QueueBackend.POSTGRESQL and settings.dsn is not None:
        from .queue.postgres_connect import describe

        return f"{describe(settings.dsn)} (node {settings.node})"
    return str(shard)


def _log_signing(queue_id: str, signing: Signing) -> None:
    match signing.outcome:
        case SignOutcome.SIGNED:
            selectors = ",".join(signing.selectors)
            log.info("dkim id=%s signed d=%s s=%s", queue_id, signing.domain, selectors)
        case SignOutcome.NO_KEY:
            log.info("dkim id=%s not signed: no key for %s", queue_id, signing.domain)
        case SignOutcome.NO_AUTHOR:
            log.info("dkim id=%s not signed: %s", queue_id, signing.detail)
        case SignOutcome.FAILED:
            log.warning("dkim id=%s queued unsigned: %s", queue_id, signing.detail)
        case SignOutcome.NOT_OURS:
            pass  # relayed mail: signing was never in question
