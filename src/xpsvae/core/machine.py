"""What this process may use of the machine: cores and memory, container limits included.

A container or batch job is often given a share of a larger machine by its
control group (``docker run --cpus 4 --memory 16g``, Kubernetes limits):
the process still sees every core and all the memory of the host, and
sizing processes and threads by those would oversubscribe the share (a CPU
quota of 4 cores on a 64-core host, run with 64 threads, crawls; jobs sized
by the host's memory are killed). Both cgroup versions are read: v2's
``cpu.max`` and ``memory.max``, v1's ``cpu.cfs_quota_us``/``cpu.cfs_period_us``
and ``memory.limit_in_bytes``, in the process's own group and every group
above it (a limit may be set on any of them).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

#: v1 writes "no limit" as the largest page-aligned 63-bit number; anything above this is none.
_NO_MEMORY_LIMIT = 2**62


def usable_cores(cgroup_root: str = "/sys/fs/cgroup",
                 proc_cgroup: str = "/proc/self/cgroup") -> int:
    """CPU cores this process may keep busy: its affinity, lowered to its CPU quota.

    Args:
        cgroup_root: where the control groups are mounted.
        proc_cgroup: the file naming this process's groups.

    Returns:
        At least 1. A quota of 1.5 cores counts as 1, so that the share is
        not oversubscribed.
    """
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS and Windows
        cores = os.cpu_count() or 1
    quota = cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def idle_cores(proc_loadavg: str = "/proc/loadavg", cpu_count: Optional[int] = None,
               readings: int = 5, interval_s: float = 0.02) -> int:
    """Cores of this machine that other processes leave idle right now (at least 1).

    Linux's ``/proc/loadavg`` counts the tasks runnable this instant (its
    fourth field, ``running/total``); less this process's own, they are the
    cores other processes keep busy. The median of a few readings smooths a
    passing task out. Where the system does not say, every core is idle.

    Args:
        proc_loadavg: the file to read.
        cpu_count: the machine's cores (default: ``os.cpu_count()``); a container
            sees the host's load, so its idle cores are counted on the host's.
        readings, interval_s: how many readings, how far apart.
    """
    cores = cpu_count or os.cpu_count() or 1
    counts = []
    for k in range(readings):
        text = _read(Path(proc_loadavg))
        try:
            counts.append(int(text.split()[3].split("/")[0]))
        except (AttributeError, IndexError, ValueError):
            return cores
        if k + 1 < readings:
            time.sleep(interval_s)
    others = max(0, sorted(counts)[len(counts) // 2] - 1)  # this process's reading thread
    return max(1, cores - others)


def cpu_quota(cgroup_root: str = "/sys/fs/cgroup",
              proc_cgroup: str = "/proc/self/cgroup") -> Optional[float]:
    """The tightest CPU quota, in cores, of this process's control groups (None: none)."""
    quotas: List[float] = []
    for folder in _group_folders("cpu", cgroup_root, proc_cgroup):
        v2 = _read(folder / "cpu.max")
        if v2 is not None:
            fields = v2.split()
            if len(fields) == 2 and fields[0] != "max":
                quotas.append(_ratio(fields[0], fields[1]))
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is not None and period is not None and quota.lstrip("-").isdigit() \
                and int(quota) > 0:
            quotas.append(_ratio(quota, period))
    quotas = [q for q in quotas if q > 0]
    return min(quotas) if quotas else None


def usable_memory(cgroup_root: str = "/sys/fs/cgroup",
                  proc_cgroup: str = "/proc/self/cgroup") -> Optional[int]:
    """Bytes of memory this process may use: the machine's, lowered to its memory limit.

    Returns:
        None where the platform tells neither (no ``sysconf``: Windows).
    """
    try:
        physical: Optional[int] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = None
    limits = [] if physical is None else [physical]
    for folder in _group_folders("memory", cgroup_root, proc_cgroup):
        for name in ("memory.max", "memory.limit_in_bytes"):
            text = _read(folder / name)
            if text is not None and text.isdigit() and 0 < int(text) < _NO_MEMORY_LIMIT:
                limits.append(int(text))
    return min(limits) if limits else None


def _group_folders(controller: str, cgroup_root: str, proc_cgroup: str) -> Iterator[Path]:
    """The folders of this process's group for ``controller`` and of every group above it.

    A v1 controller is mounted in its own folder (``cpu``, ``cpu,cpuacct``),
    v2's single hierarchy at the root. Inside a container the group's own
    path often does not exist under the mount, which then is the group
    itself: only folders that exist are given.
    """
    root = Path(cgroup_root)
    text = _read(Path(proc_cgroup))
    if text is None:
        return
    seen = set()
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: "0::/path"
            mounts = [root, root / "unified"]
        elif controller in controllers.split(","):
            mounts = [root / controllers, root / controller]
        else:
            continue
        for mount in mounts:
            folder = mount / path.strip("/")
            while True:
                if folder not in seen and folder.is_dir():
                    seen.add(folder)
                    yield folder
                if folder == mount:
                    break
                folder = folder.parent


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _ratio(numerator: str, denominator: str) -> float:
    try:
        return int(numerator) / int(denominator)
    except (ValueError, ZeroDivisionError):
        return 0.0


def arrow_for_child(threads: int) -> None:
    """Arrow in a child process of the ingest: ``threads`` of its own (the cores shared
    out among the processes, so that together they do not oversubscribe them) and the C
    library's allocator (see :func:`system_allocator`)."""
    import pyarrow as pa  # machine.py is read by light commands that never use Arrow
    pa.set_cpu_count(max(1, threads))
    pa.set_memory_pool(pa.system_memory_pool())


@contextmanager
def system_allocator() -> Iterator[None]:
    """Arrow allocates with the C library's malloc while the block runs.

    The mimalloc pool of the pyarrow wheels gives freed pages back to the
    system at once, so every chunk's large temporaries fault theirs in again:
    on a bulk file that cost about ten times the system time of malloc.
    Buffers keep track of their own pool, so the previous default comes back
    safely afterwards.
    """
    import pyarrow as pa  # machine.py is read by light commands that never use Arrow
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)
