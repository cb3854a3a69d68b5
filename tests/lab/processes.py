"""Find and kill every process that belongs to a lab host.

A host's processes are found three ways, because each misses something: its
network namespace holds the init, sshd, dockerd and sessions; containers have a
namespace of their own but descend from a shim in the host and sit in the host's
cgroup parent; and descendants catch whatever a test started that forked away.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import LabError

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _namespace_id(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def netns_pids(netns_path: Path) -> set[int]:
    """Pids of live processes in the network namespace bound at netns_path."""
    wanted = _namespace_id(str(netns_path))
    if wanted is None:
        return set()
    return {
        pid for pid in _all_pids() if _namespace_id(f"/proc/{pid}/ns/net") == wanted
    }


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1])


def with_descendants(pids: Iterable[int]) -> set[int]:
    """Return pids plus all their live descendants, from one /proc snapshot."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        parent = _parent_pid(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    pending = list(pids)
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(children.get(pid, []))
    return found


def lab_cgroups(name_prefix: str) -> list[Path]:
    """Cgroup folders named name_prefix* directly under any hierarchy root."""
    if not CGROUP_ROOT.is_dir():
        return []
    hierarchies = [CGROUP_ROOT] + [p for p in CGROUP_ROOT.iterdir() if p.is_dir()]
    found: list[Path] = []
    for hierarchy in hierarchies:
        if not (hierarchy / "cgroup.procs").exists():
            continue
        found.extend(p for p in hierarchy.glob(f"{name_prefix}*") if p.is_dir())
    return found


def cgroup_pids(cgroups: Iterable[Path]) -> set[int]:
    pids: set[int] = set()
    for top in cgroups:
        for procs in top.rglob("cgroup.procs"):
            try:
                pids.update(int(line) for line in procs.read_text().split())
            except OSError:
                continue
    return pids


def remove_cgroups(cgroups: Iterable[Path], timeout: float = 5) -> None:
    """Remove cgroup trees, deepest first; a cgroup empties a moment after its
    last process exits, so retry briefly."""
    deadline = time.monotonic() + timeout
    for top in cgroups:
        folders = sorted(
            (p for p in top.rglob("*") if p.is_dir()),
            key=lambda p: len(p.parts),
            reverse=True,
        )
        for folder in [*folders, top]:
            while folder.exists():
                try:
                    folder.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise LabError(
                            f"cannot remove cgroup {folder}: still busy; "
                            f"check `cat {folder}/cgroup.procs`"
                        ) from None
                    time.sleep(0.05)


def kill_until_gone(
    collect: Callable[[], set[int]], what: str, timeout: float = 15
) -> None:
    """SIGKILL what collect() returns, and its descendants, until nothing is left.

    collect() is called afresh each round, so a pid that died and was reused by
    an unrelated process is never targeted from a stale list.
    """
    deadline = time.monotonic() + timeout
    own = os.getpid()
    while True:
        targets = with_descendants(collect()) - {own}
        if not targets:
            return
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise LabError(
                f"{what}: processes {sorted(targets)} survived SIGKILL for "
                f"{timeout:g}s; look for them in `ps` (stuck in D state?)"
            )
        time.sleep(0.05)
