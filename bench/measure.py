"""CPU seconds and memory of one MTA, counted over every process it starts.

MTAs fork: Postfix's master starts smtpd, cleanup, qmgr and smtp processes that
exit after max_use requests; Exim forks a process per connection and per
delivery and re-executes itself. Summing /proc/PID/stat over the live process
tree misses every process that exited without being waited for by a process
still in the tree, and both `postfix start` and `exim -bd` daemonise away from
the process that started them. So the MTA is started inside its own cgroup
(cgroup v1 `cpuacct` or a cgroup2 directory), whose CPU counter includes
processes that have already exited and whose `cgroup.procs` names every live
process, however it was forked.

Without a writable cgroup hierarchy the fallback walks the live process tree
from the started process and adds its children's reaped time (cutime/cstime);
results are then marked `approximate`.

Memory is sampled, not accounted: the sum of VmRSS over the group's processes
(shared library pages counted once per process, which flatters a single-process
MTA against a multi-process one) and the sum of Pss from smaps_rollup (shared
pages divided among the processes that map them: the fairer figure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True, slots=True)
class CpuTimes:
    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user - other.user, self.system - other.system)


@dataclass(frozen=True, slots=True)
class MachineCpu:
    """The whole machine's CPU time by kind (/proc/stat's first line), in ticks.

    A CPU-bound peer loses throughput to what else runs (the submission client,
    the sink) and to what the hypervisor takes (steal); a peer that waits on
    something else loses less. A round's idle and steal shares say which case
    its figure is."""

    busy: int
    idle: int  # idle and iowait
    steal: int

    @staticmethod
    def now() -> MachineCpu:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return MachineCpu(user + nice + system + irq + softirq, idle + iowait, steal)

    def shares_since(self, before: MachineCpu) -> tuple[float, float]:
        """(idle %, steal %) of the machine's time between `before` and this."""
        busy, idle, steal = (self.busy - before.busy, self.idle - before.idle,
                             self.steal - before.steal)  # fmt: skip
        total = busy + idle + steal
        if total <= 0:
            return 0.0, 0.0
        return 100 * idle / total, 100 * steal / total


@dataclass(frozen=True, slots=True)
class MemoryPeak:
    rss_kb: int
    pss_kb: int
    processes: int


class ProcessGroup:
    """Where the processes of one MTA run are accounted; create() picks the mechanism."""

    mechanism = "none"
    approximate = True

    def enter_pid(self) -> None:
        """Called in the child between fork and exec (subprocess preexec_fn)."""

    def set_root(self, pid: int) -> None:
        self.root = pid

    def pids(self) -> list[int]:
        raise NotImplementedError

    def cpu(self) -> CpuTimes:
        raise NotImplementedError

    def remove(self) -> None:
        """Forget the group; every process in it must have exited."""

    @staticmethod
    def create(name: str) -> ProcessGroup:
        for candidate in (_CgroupV1.make, _CgroupV2.make):
            group = candidate(name)
            if group is not None:
                return group
        return _ProcessTree()


class _CgroupV1(ProcessGroup):
    mechanism = "cgroup-v1-cpuacct"
    approximate = False

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def make(cls, name: str) -> _CgroupV1 | None:
        base = Path("/sys/fs/cgroup/cpuacct")
        if not (base / "cpuacct.usage").exists():
            return None
        path = base / name
        try:
            path.mkdir(exist_ok=True)
        except OSError:
            return None
        return cls(path)

    def enter_pid(self) -> None:
        (self.path / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def pids(self) -> list[int]:
        return _read_pids(self.path / "cgroup.procs")

    def cpu(self) -> CpuTimes:
        # cpuacct.usage_user/_sys are in nanoseconds (cpuacct.stat is in 10 ms ticks).
        user = int((self.path / "cpuacct.usage_user").read_text()) / 1e9
        system = int((self.path / "cpuacct.usage_sys").read_text()) / 1e9
        return CpuTimes(user, system)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


class _CgroupV2(ProcessGroup):
    mechanism = "cgroup-v2"
    approximate = False

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def make(cls, name: str) -> _CgroupV2 | None:
        mount = _cgroup2_mount()
        if mount is None:
            return None
        path = mount / name
        try:
            path.mkdir(exist_ok=True)
            if not (path / "cpu.stat").exists():
                path.rmdir()
                return None
        except OSError:
            return None
        return cls(path)

    def enter_pid(self) -> None:
        (self.path / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def pids(self) -> list[int]:
        return _read_pids(self.path / "cgroup.procs")

    def cpu(self) -> CpuTimes:
        fields = dict(
            line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line
        )
        return CpuTimes(int(fields["user_usec"]) / 1e6, int(fields["system_usec"]) / 1e6)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


class _ProcessTree(ProcessGroup):
    mechanism = "proc-tree"
    approximate = True
    root = 0

    def pids(self) -> list[int]:
        return process_tree(self.root)

    def cpu(self) -> CpuTimes:
        user = system = 0
        for pid in self.pids():
            stat = _stat_fields(pid)
            if stat is not None:
                # utime stime cutime cstime: fields 14-17 of proc(5), 11-14 after the comm split.
                user += int(stat[11]) + int(stat[13])
                system += int(stat[12]) + int(stat[14])
        return CpuTimes(user / _CLOCK_TICKS, system / _CLOCK_TICKS)


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it (a supervisor and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat_fields(int(entry))
            if stat is not None:
                children.setdefault(int(stat[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except OSError:
        return []


def _cgroup2_mount() -> Path | None:
    with open("/proc/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    return None


def memory_now(pids: list[int]) -> MemoryPeak:
    rss = pss = alive = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            # Gone, or a kernel without smaps_rollup: statm's resident pages still count.
            try:
                rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_KB
                alive += 1
            except OSError:
                pass
            continue
        alive += 1
        for line in rollup.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return MemoryPeak(rss, pss, alive)


class MemorySampler:
    """Samples a group's memory every `interval` seconds while running; keeps the peaks."""

    def __init__(self, group: ProcessGroup, interval: float = 0.1) -> None:
        self.group = group
        self.interval = interval
        self.peak = MemoryPeak(0, 0, 0)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def sample(self) -> MemoryPeak:
        now = memory_now(self.group.pids())
        self.peak = MemoryPeak(
            max(self.peak.rss_kb, now.rss_kb),
            max(self.peak.pss_kb, now.pss_kb),
            max(self.peak.processes, now.processes),
        )
        return now

    async def _run(self) -> None:
        while True:
            # Reading /proc is blocking but short (about 50 µs per process).
            self.sample()
            await asyncio.sleep(self.interval)

    async def stop(self) -> MemoryPeak:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()
        return self.peak


def monotonic() -> float:
    """CLOCK_MONOTONIC: the same clock in every process on the machine (sinks report it)."""
    return time.monotonic()
