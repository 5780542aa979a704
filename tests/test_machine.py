"""Cores and memory a process may use, container limits (cgroup v1 and v2) included."""

import os

import pytest

from xpsvae.core import machine
from xpsvae.core.machine import cpu_quota, usable_cores, usable_memory
from xpsvae.ingestion import pipeline as ingest_module

AFFINITY = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
PHYSICAL = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v2_tree(tmp_path, cpu_max=None, memory_max=None, group="/job/step", at="group"):
    """A cgroup v2 mount with the limits set on the process's group or on its parent."""
    root = tmp_path / "cgroup"
    folder = root / group.strip("/")
    folder.mkdir(parents=True)
    target = folder if at == "group" else folder.parent
    if cpu_max is not None:
        write(target / "cpu.max", cpu_max + "\n")
    if memory_max is not None:
        write(target / "memory.max", memory_max + "\n")
    write(tmp_path / "cgroup.proc", f"0::{group}\n")
    return str(root), str(tmp_path / "cgroup.proc")


def v1_tree(tmp_path, quota, period, memory_limit):
    """A cgroup v1 layout as inside a container: the group's own path absent under the mounts."""
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", f"{quota}\n")
    write(root / "cpu,cpuacct" / "cpu.cfs_period_us", f"{period}\n")
    write(root / "memory" / "memory.limit_in_bytes", f"{memory_limit}\n")
    write(tmp_path / "cgroup.proc",
          "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n")
    return str(root), str(tmp_path / "cgroup.proc")


def test_v2_quota_and_memory_limit_of_the_group(tmp_path):
    root, proc = v2_tree(tmp_path, cpu_max="150000 100000", memory_max=str(3 * 2**30))
    assert cpu_quota(root, proc) == pytest.approx(1.5)
    assert usable_cores(root, proc) == 1  # 1.5 cores: not oversubscribed
    assert usable_memory(root, proc) == min(PHYSICAL, 3 * 2**30)


def test_v2_limit_set_on_a_parent_group_counts(tmp_path):
    root, proc = v2_tree(tmp_path, cpu_max="100000 100000", memory_max=str(2**30), at="parent")
    assert usable_cores(root, proc) == 1
    assert usable_memory(root, proc) == min(PHYSICAL, 2**30)


def test_v2_without_limits_leaves_affinity_and_physical_memory(tmp_path):
    root, proc = v2_tree(tmp_path, cpu_max="max 100000", memory_max="max")
    assert cpu_quota(root, proc) is None
    assert usable_cores(root, proc) == AFFINITY
    assert usable_memory(root, proc) == PHYSICAL


def test_v1_quota_and_memory_limit_at_the_mounts(tmp_path):
    root, proc = v1_tree(tmp_path, 100000, 100000, 2**31)
    assert cpu_quota(root, proc) == pytest.approx(1.0)
    assert usable_cores(root, proc) == 1
    assert usable_memory(root, proc) == min(PHYSICAL, 2**31)


def test_v1_unlimited_is_no_limit(tmp_path):
    root, proc = v1_tree(tmp_path, -1, 100000, 9223372036854771712)
    assert cpu_quota(root, proc) is None
    assert usable_cores(root, proc) == AFFINITY
    assert usable_memory(root, proc) == PHYSICAL


def test_a_quota_above_the_affinity_changes_nothing(tmp_path):
    root, proc = v2_tree(tmp_path, cpu_max=f"{(AFFINITY + 8) * 100000} 100000")
    assert usable_cores(root, proc) == AFFINITY


def test_no_cgroup_files_at_all(tmp_path):
    missing = str(tmp_path / "nothing")
    assert cpu_quota(missing, missing) is None
    assert usable_cores(missing, missing) == AFFINITY
    assert usable_memory(missing, missing) == PHYSICAL


def test_default_jobs_follow_the_container_memory_limit(monkeypatch):
    """16 cores but a 4 GB limit: two jobs (one per 2 GB), not eight."""
    monkeypatch.setattr(machine, "usable_cores", lambda: 16)
    monkeypatch.setattr(machine, "usable_memory", lambda: 4 * 2**30)
    assert ingest_module.default_jobs(20) == 2
    monkeypatch.setattr(machine, "usable_memory", lambda: None)  # unknown: cores decide
    assert ingest_module.default_jobs(20) == 8


def test_idle_cores_are_the_machines_less_what_others_keep_running(tmp_path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.31 1.38 1.25 3/84 5034\n")  # this process and two others running
    assert machine.idle_cores(str(loadavg), cpu_count=8, interval_s=0) == 6
    assert machine.idle_cores(str(loadavg), cpu_count=2, interval_s=0) == 1  # at least one
    loadavg.write_text("0.00 0.00 0.00 1/84 5034\n")  # only this process
    assert machine.idle_cores(str(loadavg), cpu_count=2, interval_s=0) == 2
    assert machine.idle_cores(str(tmp_path / "absent"), cpu_count=4) == 4  # not said: all
