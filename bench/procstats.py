"""What the kernel says about CPU time and memory, read from /proc (Linux), so the bench needs no psutil."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def process_tree(root: int) -> list[int]:
    """root and every descendant (worker processes of predserve --workers, MLServer's inference pool)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of the given processes (those that have exited count as 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds spent by everything on the machine (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def memory_kib(pid: int, field: str) -> int:
    """A line of /proc/PID/status in KiB: VmRSS (resident now) or VmHWM (peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@dataclass
class CpuWindow:
    """CPU used during a measured window by the bench itself, the server, and everything else."""

    wall: float
    bench: float
    server: float
    machine: float

    @property
    def others(self) -> float:
        return max(0.0, self.machine - self.bench - self.server)

    def share(self, seconds: float) -> float:
        """A CPU-seconds figure as a percentage of one core over the window."""
        return 100.0 * seconds / self.wall if self.wall > 0 else 0.0


class CpuMeter:
    def __init__(self, server_pid: int | None) -> None:
        self.server_pids = process_tree(server_pid) if server_pid else []
        self._start = (time.perf_counter(), time.process_time(), cpu_seconds(self.server_pids), machine_busy_seconds())

    def stop(self) -> CpuWindow:
        wall, bench, server, machine = self._start
        return CpuWindow(
            wall=time.perf_counter() - wall,
            bench=time.process_time() - bench,
            server=cpu_seconds(self.server_pids) - server,
            machine=machine_busy_seconds() - machine,
        )
