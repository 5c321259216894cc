"""relaymail side by side with Postfix and Exim: throughput, CPU, memory.

    python bench/run.py                       # everything, 3 rounds (about 10 minutes)
    python bench/run.py --quick               # a tenth of the messages: a smoke run
    python bench/run.py --peers postfix,exim --workload small --transport plain

For each workload x transport x destinations scenario the peers run in turn,
round after round (the order rotates each round), each run against a fresh
queue: start the MTA, submit the workload over SMTP, wait until the last message
arrives at the sink, stop the MTA. Reported per peer: the median over the rounds
of messages/s (first submission to last arrival), CPU seconds of all the MTA's
processes, and peak memory; then relaymail's figure divided by each peer's.
Also: relaymail holding many concurrent outbound connections to slow sinks, and
the cost of one `sendmail` invocation. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import MachineCpu, MemorySampler, ProcessGroup
from peers import BASELINE, DKIM_PEER, Peer, PeerUnavailable, RunSpec, make_peer
from sink import SinkSet, smtp_sink_available
from submit import Workload, _message, domain, recipient, submit

BENCH_DIR = Path(__file__).resolve().parent
ALL_PEERS = ("relaymail", "postfix", "exim")


@dataclass(frozen=True, slots=True)
class Scenario:
    workload: Workload
    transport: str  # "plain" | "starttls"

    @property
    def key(self) -> str:
        w = self.workload
        return f"{w.name}/{self.transport}/{w.destinations}dest"

    @property
    def title(self) -> str:
        w = self.workload
        size = f"{w.size // 1024} KB"
        dests = "1 destination" if w.destinations == 1 else f"{w.destinations} destinations"
        return f"{w.messages} x {size}, {self.transport}, {dests}"


@dataclass
class RunResult:
    scenario: str
    peer: str
    round: int
    status: str  # ok | incomplete | unavailable | error
    detail: str = ""
    messages: int = 0
    arrived: int = 0
    accepted: int = 0
    tls_arrived: int | None = None
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    accept_seconds: float = 0.0
    cpu_user: float = 0.0
    cpu_system: float = 0.0
    cpu_total: float = 0.0
    cpu_ms_per_msg: float = 0.0
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    peak_processes: int = 0
    destinations_reached: int = 0
    accounting: str = ""
    machine_idle_pct: float = 0.0  # of the whole machine during the round (MachineCpu)
    machine_steal_pct: float = 0.0


@dataclass
class Context:
    args: argparse.Namespace
    workdir: Path
    tls_files: tuple[Path, Path] | None = None
    ca_file: Path | None = None
    started: float = field(default_factory=time.monotonic)
    unavailable: dict[str, str] = field(default_factory=dict)
    runs: list[RunResult] = field(default_factory=list)
    serial: int = 0

    def over_time(self, next_run: float = 0.0) -> bool:
        limit = self.args.time_limit
        return bool(limit) and time.monotonic() - self.started + next_run > limit

    def next_dir(self, label: str) -> Path:
        self.serial += 1
        path = self.workdir / f"{self.serial:03d}-{label}"
        path.mkdir(parents=True)
        return path


# ----------------------------------------------------------------------------- helpers


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def routes_for(destinations: int, sink_ports: list[int]) -> dict[str, int]:
    if destinations == 1:
        return {"*": sink_ports[0]}
    return {domain(i): sink_ports[i] for i in range(destinations)}


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A bench CA and a sink certificate for 127.0.0.1: (ca, chain, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, chain_path, key_path = (directory / n for n in ("ca.pem", "chain.pem", "key.pem"))
    try:
        import trustme
    except ImportError:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=sink.bench.test",
                "-addext",
                "subjectAltName=DNS:sink.bench.test,IP:127.0.0.1",
                "-keyout",
                str(key_path),
                "-out",
                str(chain_path),
            ],
            check=True,
            capture_output=True,
        )
        shutil.copy(chain_path, ca_path)
        return ca_path, chain_path, key_path
    ca = trustme.CA(organization_name="relaymail bench CA")
    cert = ca.issue_cert("sink.bench.test", "127.0.0.1")
    ca.cert_pem.write_to_path(str(ca_path))
    cert.private_key_pem.write_to_path(str(key_path))
    chain_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return ca_path, chain_path, key_path


def group_name(peer: str) -> str:
    return f"relaymail-bench-{os.getpid()}-{peer}"


async def _start_peer(ctx: Context, peer: Peer, spec: RunSpec, group: ProcessGroup) -> str | None:
    """Start `peer`; on failure remember why and return the reason."""
    try:
        await asyncio.wait_for(peer.start(spec, group), 60.0)
    except (PeerUnavailable, TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        ctx.unavailable[peer.name] = reason
        with contextlib.suppress(Exception):
            await peer.stop()
        return reason
    return None


# ------------------------------------------------------------------------- one throughput run


async def throughput_run(ctx: Context, scenario: Scenario, peer: Peer, round_no: int) -> RunResult:
    workload = scenario.workload
    result = RunResult(scenario.key, peer.name, round_no, "error", messages=workload.messages)
    if peer.name in ctx.unavailable:
        result.status, result.detail = "unavailable", ctx.unavailable[peer.name]
        return result
    run_dir = ctx.next_dir(
        f"{peer.name}-{workload.name}-{scenario.transport}-{workload.destinations}-r{round_no}"
    )
    sink_ports = free_ports(workload.destinations + 2)
    listen_port, admin_port, sink_ports = sink_ports[0], sink_ports[1], sink_ports[2:]
    tls = scenario.transport == "starttls"
    sinks = SinkSet(sink_ports, ctx.tls_files if tls else None)
    group = ProcessGroup.create(group_name(peer.name))
    result.accounting = group.mechanism + (" (approximate)" if group.approximate else "")
    spec = RunSpec(
        run_dir,
        listen_port,
        routes_for(workload.destinations, sink_ports),
        tls,
        ctx.ca_file if tls else None,
        admin_port=admin_port,
    )
    await sinks.start()
    try:
        reason = await _start_peer(ctx, peer, spec, group)
        if reason is not None:
            result.status, result.detail = "unavailable", reason
            return result
        await asyncio.sleep(ctx.args.settle)
        sampler = MemorySampler(group)
        cpu_before = group.cpu()
        machine_before = MachineCpu.now()
        sampler.start()
        limit = ctx.args.run_timeout
        submitted = await submit("127.0.0.1", listen_port, workload, ctx.args.connections, limit)
        deadline = (submitted.first_submission or time.monotonic()) + limit
        complete = await sinks.wait_for(workload.messages, deadline, ctx.args.stall)
        # Bookkeeping that trails the last delivery (queue file removal, logging).
        await asyncio.sleep(0.3)
        cpu = group.cpu() - cpu_before
        result.machine_idle_pct, result.machine_steal_pct = MachineCpu.now().shares_since(
            machine_before
        )
        memory = await sampler.stop()
        result.accepted = submitted.accepted
        result.arrived = sinks.count
        result.tls_arrived = sinks.tls_count if tls else None
        if submitted.first_submission and sinks.last_arrival:
            result.seconds = sinks.last_arrival - submitted.first_submission
            result.msgs_per_s = result.arrived / result.seconds if result.seconds > 0 else 0.0
        result.accept_seconds = submitted.seconds
        result.cpu_user, result.cpu_system, result.cpu_total = cpu.user, cpu.system, cpu.total
        result.cpu_ms_per_msg = 1000 * cpu.total / max(1, result.arrived)
        result.peak_rss_mb = memory.rss_kb / 1024
        result.peak_pss_mb = memory.pss_kb / 1024
        result.peak_processes = memory.processes
        problems = submitted.errors[:3]
        if not complete:
            problems.append(f"{sinks.count} of {workload.messages} arrived")
        if tls and sinks.tls_count < sinks.count:
            problems.append(f"only {sinks.tls_count} of {sinks.count} arrived over TLS")
        result.status = "ok" if complete and not submitted.errors else "incomplete"
        result.detail = "; ".join(problems)
    except Exception as exc:
        result.status, result.detail = "error", f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await peer.stop()
        summary = await sinks.stop()
        per_port = summary.get("per_port")
        if isinstance(per_port, dict):
            result.destinations_reached = sum(1 for v in per_port.values() if v)
        if not ctx.args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- the hold test


def established_to(ports: set[int]) -> int:
    """Outbound TCP connections in ESTABLISHED state whose remote port is a sink port."""
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) in ports:
                count += 1
    return count


async def hold_run(ctx: Context, peer: Peer) -> dict[str, Any]:
    """`connections` messages to `destinations` slow sinks that delay their reply to
    DATA by `delay` seconds: the MTA must hold one connection per message."""
    args = ctx.args
    total, dests, delay = args.hold_connections, args.hold_destinations, args.hold_delay
    per_dest = -(-total // dests)
    out: dict[str, Any] = {
        "peer": peer.name,
        "target_connections": total,
        "destinations": dests,
        "sink_delay_s": delay,
    }
    if peer.name in ctx.unavailable:
        out.update(status="unavailable", detail=ctx.unavailable[peer.name])
        return out
    run_dir = ctx.next_dir(f"{peer.name}-hold")
    ports = free_ports(dests + 1)
    listen_port, sink_ports = ports[0], ports[1:]
    sinks = SinkSet(sink_ports, None, data_delay=delay, max_connections=per_dest + 50)
    group = ProcessGroup.create(group_name(peer.name))
    spec = RunSpec(
        run_dir,
        listen_port,
        routes_for(dests, sink_ports),
        False,
        None,
        destination_concurrency=per_dest,
        total_connections=total,
    )
    workload = Workload("hold", total, 2048, dests)
    await sinks.start()
    try:
        reason = await _start_peer(ctx, peer, spec, group)
        if reason is not None:
            out.update(status="unavailable", detail=reason)
            return out
        await asyncio.sleep(args.settle)
        sampler = MemorySampler(group, interval=0.2)
        baseline = sampler.sample()
        cpu_start = group.cpu()
        sampler.start()
        port_set = set(sink_ports)
        peak = 0
        full_at: float | None = None
        cpu_full = None
        hold_cpu = None
        hold_seconds = 0.0
        submit_task = asyncio.create_task(
            submit("127.0.0.1", listen_port, workload, args.connections, delay + 60)
        )
        began = time.monotonic()
        deadline = began + delay + 90
        while time.monotonic() < deadline and sinks.count < total:
            connections = established_to(port_set)
            peak = max(peak, connections)
            now = time.monotonic()
            if full_at is None and connections >= 0.95 * total:
                full_at, cpu_full = now, group.cpu()
            if (
                full_at is not None
                and hold_cpu is None
                and (sinks.count > 0 or now - full_at >= delay / 2)
            ):
                assert cpu_full is not None
                hold_cpu, hold_seconds = group.cpu() - cpu_full, now - full_at
            await asyncio.sleep(0.2)
        submitted = await submit_task
        memory = await sampler.stop()
        cpu = group.cpu() - cpu_start
        out.update(
            status="ok" if sinks.count >= total else "incomplete",
            peak_connections=peak,
            seconds_to_full=None if full_at is None else round(full_at - began, 2),
            baseline_rss_mb=round(baseline.rss_kb / 1024, 1),
            baseline_pss_mb=round(baseline.pss_kb / 1024, 1),
            peak_rss_mb=round(memory.rss_kb / 1024, 1),
            peak_pss_mb=round(memory.pss_kb / 1024, 1),
            peak_processes=memory.processes,
            kb_per_connection_pss=round((memory.pss_kb - baseline.pss_kb) / peak, 1)
            if peak
            else None,
            hold_window_s=round(hold_seconds, 2),
            hold_cpu_s=None if hold_cpu is None else round(hold_cpu.total, 3),
            total_cpu_s=round(cpu.total, 3),
            arrived=sinks.count,
            accepted=submitted.accepted,
            detail="; ".join(submitted.errors[:3]),
        )
    except Exception as exc:
        out.update(status="error", detail=f"{type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            await peer.stop()
        await sinks.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return out


# ------------------------------------------------------------------------- the sendmail test


async def sendmail_run(ctx: Context, peer: Peer) -> dict[str, Any]:
    """Process start to exit of the MTA's sendmail, with the MTA running."""
    out: dict[str, Any] = {"peer": peer.name, "invocations": ctx.args.sendmail_count}
    if peer.name in ctx.unavailable:
        out.update(status="unavailable", detail=ctx.unavailable[peer.name])
        return out
    run_dir = ctx.next_dir(f"{peer.name}-sendmail")
    ports = free_ports(2)
    sinks = SinkSet([ports[1]])
    group = ProcessGroup.create(group_name(peer.name))
    spec = RunSpec(run_dir, ports[0], {"*": ports[1]}, False, None)
    await sinks.start()
    try:
        reason = await _start_peer(ctx, peer, spec, group)
        if reason is not None:
            out.update(status="unavailable", detail=reason)
            return out
        await asyncio.sleep(ctx.args.settle)
        walls, cpus, failures = [], [], []
        message = _message(0, 2048, recipient(0, 1))
        for n in range(ctx.args.sendmail_count):
            command = peer.sendmail_command(recipient(n, 1))
            if command is None:
                out.update(status="unavailable", detail="no sendmail command")
                return out
            argv, env = command
            wall, cpu, code, err = await asyncio.to_thread(_timed_sendmail, argv, env, message)
            if code != 0:
                failures.append(f"exit {code}: {err[-200:]}")
                if len(failures) >= 3:
                    break
                continue
            walls.append(wall)
            cpus.append(cpu)
        instructions = None
        if walls and shutil.which("valgrind"):
            logs = run_dir / "callgrind"
            logs.mkdir(exist_ok=True)
            counted = peer.counted_sendmail_command(recipient(len(walls), 1), logs)
            if counted is not None:
                instructions = await asyncio.to_thread(
                    _sendmail_instructions, *counted, message, logs
                )
        delivered = 0
        if walls:
            expected = len(walls) + (instructions is not None)
            await sinks.wait_for(expected, time.monotonic() + 30, 15)
            delivered = sinks.count
        out.update(
            status="ok" if walls and not failures else ("unavailable" if not walls else "partial"),
            command=" ".join(peer.sendmail_command("r0@d0.bench.test")[0]),  # type: ignore[index]
            runs=len(walls),
            wall_ms_median=_ms(statistics.median(walls)) if walls else None,
            wall_ms_p90=_ms(_quantile(walls, 0.9)) if walls else None,
            wall_ms_min=_ms(min(walls)) if walls else None,
            wall_ms_max=_ms(max(walls)) if walls else None,
            cpu_ms_median=_ms(statistics.median(cpus)) if cpus else None,
            instructions=instructions,
            delivered=delivered,
            detail="; ".join(failures[:3]),
        )
    except Exception as exc:
        out.update(status="error", detail=f"{type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            await peer.stop()
        await sinks.stop()
        if not ctx.args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return out


def _sendmail_instructions(
    argv: list[str], env: dict[str, str], message: bytes, logs: Path
) -> int | None:
    """Instructions one sendmail executes, its children (Postfix's postdrop) included:
    valgrind's callgrind count, which unlike wall time does not move with the machine's
    load. None when valgrind fails."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--trace-children=yes",
         "--callgrind-out-file=/dev/null", f"--log-file={logs}/%p.log", *argv],
        input=message, capture_output=True, env={**os.environ, **env}, check=False,
    )  # fmt: skip
    counts = [
        int(line.rsplit(" ", 1)[1])
        for log in logs.glob("*.log")
        for line in log.read_text(errors="replace").splitlines()
        if "Collected :" in line
    ]
    return sum(counts) if done.returncode == 0 and counts else None


def _timed_sendmail(
    argv: list[str], env: dict[str, str], message: bytes
) -> tuple[float, float, int, str]:
    """Wall seconds from spawn to exit, CPU seconds of the process and the children it
    waited for (os.wait4), exit status, stderr."""
    started = time.perf_counter()
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **env},
        )
    except OSError as exc:
        return 0.0, 0.0, 127, str(exc)
    assert process.stdin is not None and process.stderr is not None
    try:
        process.stdin.write(message)
        process.stdin.close()
    except BrokenPipeError:
        pass
    err = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, process.returncode, err.strip()


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 2)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------------- reports


@dataclass
class Summary:
    scenario: str
    peer: str
    rounds_ok: int
    msgs_per_s: float | None
    msgs_per_s_min: float | None
    msgs_per_s_max: float | None
    cpu_s: float | None
    cpu_ms_per_msg: float | None
    peak_rss_mb: float | None
    peak_pss_mb: float | None
    status: str
    detail: str = ""
    ratio: dict[str, float | None] = field(default_factory=dict)


def summarise(runs: list[RunResult], scenario: str, peers: list[str]) -> list[Summary]:
    out = []
    for peer in peers:
        mine = [r for r in runs if r.scenario == scenario and r.peer == peer]
        ok = [r for r in mine if r.status == "ok"]
        if not ok:
            detail = next((r.detail for r in mine if r.detail), "")
            status = mine[0].status if mine else "not run"
            out.append(
                Summary(scenario, peer, 0, None, None, None, None, None, None, None, status, detail)
            )
            continue
        rates = [r.msgs_per_s for r in ok]
        out.append(
            Summary(
                scenario,
                peer,
                len(ok),
                statistics.median(rates),
                min(rates),
                max(rates),
                statistics.median(r.cpu_total for r in ok),
                statistics.median(r.cpu_ms_per_msg for r in ok),
                statistics.median(r.peak_rss_mb for r in ok),
                statistics.median(r.peak_pss_mb for r in ok),
                "ok" if len(ok) == len(mine) else f"{len(ok)}/{len(mine)} rounds ok",
                "; ".join(sorted({r.detail for r in mine if r.detail}))[:300],
            )
        )
    relaymail = next((s for s in out if s.peer == "relaymail" and s.msgs_per_s), None)
    for s in out:
        if s.peer == "relaymail":
            continue
        s.ratio = {
            "msgs_per_s": _ratio(relaymail.msgs_per_s if relaymail else None, s.msgs_per_s),
            "cpu_s": _ratio(relaymail.cpu_s if relaymail else None, s.cpu_s),
            "peak_pss_mb": _ratio(relaymail.peak_pss_mb if relaymail else None, s.peak_pss_mb),
        }
    return out


def _ratio(mine: float | None, theirs: float | None) -> float | None:
    if not mine or not theirs:
        return None
    return round(mine / theirs, 3)


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(scenarios: list[Scenario], summaries: dict[str, list[Summary]]) -> None:
    header = (
        f"  {'peer':<10} {'msgs/s':>8} {'(min-max)':>15} {'CPU s':>7} {'ms/msg':>7} "
        f"{'RSS MB':>7} {'PSS MB':>7}   relaymail/peer: msgs/s  CPU   PSS"
    )
    for scenario in scenarios:
        rows = summaries.get(scenario.key)
        if not rows:
            continue
        print(f"\n{scenario.title}")
        print(header)
        for s in rows:
            if s.msgs_per_s is None:
                print(f"  {s.peer:<10} {s.status}: {s.detail[:110]}")
                continue
            span = f"({s.msgs_per_s_min:.0f}-{s.msgs_per_s_max:.0f})"
            ratio = ""
            if s.ratio:
                ratio = "   " + "  ".join(
                    f"{_fmt(s.ratio.get(k), '.2f'):>6}"
                    for k in ("msgs_per_s", "cpu_s", "peak_pss_mb")
                )
            note = "" if s.status == "ok" else f"  [{s.status}]"
            print(
                f"  {s.peer:<10} {s.msgs_per_s:>8.0f} {span:>15} {_fmt(s.cpu_s, '.2f'):>7} "
                f"{_fmt(s.cpu_ms_per_msg, '.3f'):>7} {_fmt(s.peak_rss_mb, '.1f'):>7} "
                f"{_fmt(s.peak_pss_mb, '.1f'):>7}{ratio}{note}"
            )


def print_hold(results: list[dict[str, Any]]) -> None:
    if not results:
        return
    first = results[0]
    print(
        f"\nHolding {first['target_connections']} outbound connections "
        f"({first['destinations']} slow sinks, reply to DATA after {first['sink_delay_s']} s)"
    )
    print(
        f"  {'peer':<10} {'peak conns':>10} {'s to full':>9} {'PSS MB':>7} {'RSS MB':>7} "
        f"{'KB/conn':>8} {'procs':>6} {'hold CPU s':>10} {'total CPU s':>11}"
    )
    for r in results:
        if r.get("status") not in ("ok", "incomplete"):
            print(f"  {r['peer']:<10} {r.get('status')}: {str(r.get('detail'))[:110]}")
            continue
        hold = (
            "-" if r["hold_cpu_s"] is None else f"{r['hold_cpu_s']:.2f}/{r['hold_window_s']:.0f}s"
        )
        print(
            f"  {r['peer']:<10} {r['peak_connections']:>10} {_fmt(r['seconds_to_full'], '.1f'):>9} "
            f"{r['peak_pss_mb']:>7.1f} {r['peak_rss_mb']:>7.1f} "
            f"{_fmt(r['kb_per_connection_pss'], '.0f'):>8} {r['peak_processes']:>6} "
            f"{hold:>10} {r['total_cpu_s']:>11.2f}"
            + ("" if r["status"] == "ok" else f"  [{r['arrived']} arrived]")
        )


def print_sendmail(results: list[dict[str, Any]]) -> None:
    if not results:
        return
    print("\nsendmail: one 2 KB message, process start to exit (MTA running)")
    print(
        f"  {'peer':<18} {'median ms':>9} {'min-max ms':>13} {'p90 ms':>7} {'CPU ms':>7}"
        f" {'M instr':>8} {'runs':>5} {'delivered':>9}"
    )
    for r in results:
        if r.get("wall_ms_median") is None:
            print(f"  {r['peer']:<18} {r.get('status')}: {str(r.get('detail'))[:110]}")
            continue
        spread = f"{r['wall_ms_min']:.1f}-{r['wall_ms_max']:.1f}"
        instructions = r.get("instructions")
        millions = "-" if instructions is None else f"{instructions / 1e6:.1f}"
        print(
            f"  {r['peer']:<18} {r['wall_ms_median']:>9.1f} {spread:>13} {r['wall_ms_p90']:>7.1f} "
            f"{r['cpu_ms_median']:>7.1f} {millions:>8} {r['runs']:>5} {r['delivered']:>9}"
        )


# ------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tenth of the messages, 200 held connections, 20 sendmail calls",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--peers", default=",".join(ALL_PEERS))
    p.add_argument("--workload", choices=("small", "large", "all"), default="all")
    p.add_argument("--transport", choices=("plain", "starttls", "all"), default="all")
    p.add_argument("--destinations", choices=("1", "100", "all"), default="all")
    p.add_argument(
        "--scale",
        type=float,
        help="fraction of the standard message counts (10,000 and 1,000); --quick is 0.1",
    )
    p.add_argument("--messages", type=int, help="override the message count of every workload")
    p.add_argument("--connections", type=int, default=10, help="concurrent submission sessions")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-hold", action="store_true")
    p.add_argument("--skip-sendmail", action="store_true")
    p.add_argument("--hold-peers", help="peers for the hold test (default: relaymail,postfix)")
    p.add_argument("--hold-connections", type=int)
    p.add_argument("--hold-destinations", type=int, default=10)
    p.add_argument("--hold-delay", type=float)
    p.add_argument("--sendmail-count", type=int)
    p.add_argument(
        "--relaymail-command",
        help="how to run relaymail (default: 'relaymail' on PATH, else "
        "'python -m relaymail.commands.cli'); 'serve --config FILE' is appended",
    )
    p.add_argument(
        "--baseline-command",
        help="another relaymail build, e.g. an older checkout's .venv/bin/relaymail: it runs "
        "as the peer relaymail-baseline, added to --peers, in the same rounds",
    )
    p.add_argument(
        "--dkim",
        choices=("rsa", "ed25519", "both"),
        help="also run relaymail signing every message with these keys, as the peer "
        f"{DKIM_PEER}, added to --peers, in the same rounds",
    )
    p.add_argument(
        "--relaymail-processes",
        type=int,
        help="[server] processes for relaymail (default: its own, one worker per CPU);"
        " 1 runs it in one process, for comparison",
    )
    p.add_argument(
        "--relaymail-sendmail",
        help="relaymail's sendmail command template, e.g. "
        "'relaymail sendmail -C {config} -f {sender} {recipient}'",
    )
    p.add_argument(
        "--run-timeout",
        type=float,
        default=120.0,
        help="seconds one run may take from first submission",
    )
    p.add_argument(
        "--stall",
        type=float,
        default=30.0,
        help="give up a run after this many seconds without an arrival",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=0.5,
        help="seconds between listener ready and the first submission",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=570.0,
        help="start no new run after this many seconds (0: no limit)",
    )
    p.add_argument("--workdir", type=Path, default=BENCH_DIR / ".work")
    p.add_argument("--keep", action="store_true", help="keep queues and logs of every run")
    p.add_argument("--json", type=Path, help="results file (default bench/results/<time>.json)")
    args = p.parse_args(argv)
    scale = args.scale or (0.1 if args.quick else 1.0)
    args.small_messages = args.messages or max(1, round(10_000 * scale))
    args.large_messages = args.messages or max(1, round(1_000 * scale))
    args.hold_connections = args.hold_connections or (200 if args.quick else 1000)
    args.hold_delay = args.hold_delay or (8.0 if args.quick else 15.0)
    args.sendmail_count = args.sendmail_count or (20 if args.quick else 50)
    return args


def scenarios_for(args: argparse.Namespace) -> list[Scenario]:
    workloads = {"small": (args.small_messages, 2048), "large": (args.large_messages, 102_400)}
    names = ["small", "large"] if args.workload == "all" else [args.workload]
    transports = ["plain", "starttls"] if args.transport == "all" else [args.transport]
    dests = [1, 100] if args.destinations == "all" else [int(args.destinations)]
    return [
        Scenario(Workload(name, workloads[name][0], workloads[name][1], d), transport)
        for name in names
        for d in dests
        for transport in transports
    ]


def machine_facts(workdir: Path) -> dict[str, Any]:
    fs = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE,OPTIONS", "-T", str(workdir)],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "workdir_filesystem": fs,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


async def main_async(args: argparse.Namespace) -> int:
    peer_names = [p.strip() for p in args.peers.split(",") if p.strip()]
    if args.baseline_command and BASELINE not in peer_names:
        peer_names.insert(1, BASELINE)
    if args.dkim and DKIM_PEER not in peer_names:
        peer_names.insert(1, DKIM_PEER)
    peers = {
        name: make_peer(
            name,
            args.relaymail_sendmail,
            args.relaymail_command,
            args.baseline_command,
            args.dkim,
            args.relaymail_processes,
        )
        for name in peer_names
    }
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = args.workdir / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, workdir)
    if (problem := smtp_sink_available()) is not None:
        print(f"cannot run: {problem}", file=sys.stderr)
        return 2
    for name, peer in peers.items():
        if (reason := peer.unavailable()) is not None:
            ctx.unavailable[name] = reason
    ca, chain, key = make_tls_files(workdir / "tls")
    ctx.ca_file, ctx.tls_files = ca, (chain, key)

    scenarios = [] if args.skip_throughput else scenarios_for(args)
    print(
        f"relaymail benchmark: peers {', '.join(peer_names)}; {args.rounds} rounds; "
        f"work in {workdir}"
    )
    for name, reason in ctx.unavailable.items():
        print(f"  {name}: not available: {reason}")
    # The short tests first, so that --time-limit only ever cuts throughput rounds.
    sendmail: list[dict[str, Any]] = []
    if not args.skip_sendmail:
        for name in peer_names:
            sendmail.append(await sendmail_run(ctx, peers[name]))
            print(
                f"  sendmail {name}: {sendmail[-1].get('status')} "
                f"{sendmail[-1].get('wall_ms_median') or ''}",
                flush=True,
            )

    hold: list[dict[str, Any]] = []
    if not args.skip_hold:
        hold_names = (args.hold_peers or "relaymail,postfix").split(",")
        for name in hold_names:
            peer = peers.get(name) or make_peer(
                name, args.relaymail_sendmail, args.relaymail_command
            )
            hold.append(await hold_run(ctx, peer))
            print(
                f"  hold {name}: {hold[-1].get('status')} "
                f"{hold[-1].get('peak_connections', '')} connections",
                flush=True,
            )

    # Round-major: every scenario once, then again. Slow drift of the machine (other
    # load, page cache, disk) then spreads over all scenarios and peers, and a run cut
    # short by --time-limit still has every scenario. A run is not started when the
    # same peer's previous run of that scenario says it would end past the limit.
    took: dict[tuple[str, str], float] = {}
    cut = 0
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % len(peer_names)
        for scenario in scenarios:
            for name in peer_names[shift:] + peer_names[:shift]:
                if ctx.over_time(took.get((scenario.key, name), 0.0)):
                    cut += 1
                    continue
                began = time.monotonic()
                result = await throughput_run(ctx, scenario, peers[name], round_no)
                took[(scenario.key, name)] = time.monotonic() - began
                ctx.runs.append(result)
                print(
                    f"  {scenario.key:<24} r{round_no} {name:<10} {result.status:<11} "
                    + (
                        f"{result.msgs_per_s:8.0f} msg/s  CPU {result.cpu_total:6.2f} s  "
                        f"PSS {result.peak_pss_mb:6.1f} MB  idle {result.machine_idle_pct:3.0f} %"
                        f"  steal {result.machine_steal_pct:3.0f} %  {result.detail[:80]}"
                        if result.status in ("ok", "incomplete")
                        else result.detail[:100]
                    ),
                    flush=True,
                )

    summaries = {s.key: summarise(ctx.runs, s.key, peer_names) for s in scenarios}
    print_table(scenarios, summaries)
    print_hold(hold)
    print_sendmail(sendmail)
    if cut:
        print(
            f"\n{cut} runs not started: they would have ended after --time-limit "
            f"{args.time_limit:.0f} s (use --time-limit 0 for the complete matrix)"
        )

    report = {
        "started": stamp,
        "elapsed_s": round(time.monotonic() - ctx.started, 1),
        "machine": machine_facts(workdir),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "peers": {
            name: {
                "version": p.version(),
                "notes": p.notes,
                "unavailable": ctx.unavailable.get(name),
            }
            for name, p in peers.items()
        },
        "scenarios": {s.key: s.title for s in scenarios},
        "summary": {k: [asdict(s) for s in v] for k, v in summaries.items()},
        "runs": [asdict(r) for r in ctx.runs],
        "runs_not_started": cut,
        "hold": hold,
        "sendmail": sendmail,
    }
    out = args.json or BENCH_DIR / "results" / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {out}  ({report['elapsed_s']:.0f} s)")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(
            "bench/run.py runs MTAs with their own users and queues: run it as root",
            file=sys.stderr,
        )
        return 2
    # The peers come from Debian, installed by the benchmark itself (idempotent, ~0.1 s
    # when everything is there): one command on a fresh machine.
    installer = Path(__file__).resolve().parent.parent / "scripts" / "install-bench-peers"
    if subprocess.run([str(installer)], check=False).returncode != 0:
        print("bench/run.py: installing the peers failed (see above)", file=sys.stderr)
        return 2
    try:
        import uvloop

        return uvloop.run(main_async(args))
    except ImportError:
        return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
