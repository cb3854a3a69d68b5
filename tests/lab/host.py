"""One lab host: a long-lived init holding a net + mount namespace, and LabHost.

The init mounts the host's private folders, then sleeps; sshd, dockerd and every
LabHost.run() enter its namespaces, so they all see the same private files.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .commands import CLEAN_ENV, run_local
from .errors import LabCommandError, LabCommandTimeout, LabError
from .network import ipv6_address


@dataclass(frozen=True)
class PrivateDir:
    """A folder each host gets its own copy of, bind-mounted from its file tree.

    seed: start the copy with the control machine's contents, owners included,
    for folders that hosts cannot work without (/etc: users, sudo, the trust
    store, podman's policy.json).
    emptied: subfolders of a seeded folder that start empty all the same.
    in_memory: keep the copy on a tmpfs of its own, mounted at its place in the
    host's tree here, for a seed of many small files: this machine's disk can
    take a millisecond to create one, and /etc has 1300 for each host.
    """

    path: str
    seed: bool = False
    emptied: tuple[str, ...] = ()
    in_memory: bool = False


# Extend here when a task writes somewhere new: whatever a task writes over SSH
# must land in the host's own tree, or hosts would see each other's changes.
PRIVATE_DIRS: tuple[PrivateDir, ...] = (
    # All of /etc, so that nothing written there on a host (a task, a bug in one,
    # useradd, chpasswd) reaches the control machine or another host. The
    # runtimes' folders and sudoers.d start empty: this machine's own
    # containerd/config.toml or sudo rules must not decide what a test sees.
    PrivateDir(
        "/etc",
        seed=True,
        emptied=("docker", "containerd", "rancher", "buildkit", "pki", "sudoers.d"),
        in_memory=True,
    ),
    PrivateDir("/home"),
    PrivateDir("/usr/local/share/ca-certificates"),
    PrivateDir("/opt/registry"),
    PrivateDir("/srv/registry"),  # the registry's data in a host folder (--data)
    PrivateDir("/root/.docker"),
    PrivateDir("/var/lib/docker"),
    PrivateDir("/var/lib/containerd"),
    PrivateDir("/var/lib/containers"),
)

# Mounted fresh in every host: sockets, pid files and scratch space stay private.
TMPFS_DIRS = ("/run", "/tmp")

# A cap on the RAM of each in-memory copy, far above a copy of /etc (4 MB), so a
# runaway write on a host fills its own tmpfs, not this machine's memory.
IN_MEMORY_SIZE = "256m"


def _copy_tree(source: Path, target: Path, emptied: set[Path]) -> None:
    def ignore(folder: str, names: list[str]) -> list[str]:
        return names if Path(folder) in emptied else []

    try:
        shutil.copytree(
            source, target, symlinks=True, ignore=ignore, dirs_exist_ok=True
        )
    except shutil.Error as error:
        # Other labs on this machine may run useradd while we copy: a lock or
        # temporary file of theirs that went away in between is no loss.
        if any(os.path.lexists(failed[0]) for failed in error.args[0]):
            raise


def _copy_owners(source: Path, target: Path, emptied: set[Path]) -> None:
    """Give each copy its original's owner, which copytree does not keep: a
    service's config stays its user's, /etc/shadow readable by group shadow."""
    for folder, dirs, files in os.walk(source):
        if Path(folder) in emptied:
            dirs.clear()
            continue
        for name in (*dirs, *files):
            original = Path(folder, name)
            copy = target / original.relative_to(source)
            try:
                owner, made = os.lstat(original), os.lstat(copy)
            except FileNotFoundError:
                continue  # came or went while we copied, as in _copy_tree
            if (owner.st_uid, owner.st_gid) != (made.st_uid, made.st_gid):
                os.lchown(copy, owner.st_uid, owner.st_gid)


def seed_folder(private: PrivateDir, target: Path) -> None:
    """Copy the control machine's folder to target, keeping modes and owners."""
    source = Path(private.path)
    emptied = {source / name for name in private.emptied}
    _copy_tree(source, target, emptied)
    _copy_owners(source, target, emptied)
    # Each is there, empty, whether or not this machine has it: hosts must not
    # depend on how this machine is set up.
    for folder in emptied:
        (target / folder.relative_to(source)).mkdir(parents=True, exist_ok=True)


def prepare_file_tree(files: Path) -> None:
    """Create the host's tree under files/, seeding folders that need content.

    In-memory folders are mounted here, in the control machine's namespace, so
    that the host and host.files see the same files; unmount_trees removes them.
    """
    for private in PRIVATE_DIRS:
        target = files / private.path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        if private.in_memory:
            options = f"mode=0755,size={IN_MEMORY_SIZE}"
            run_local(["mount", "-t", "tmpfs", "-o", options, "lab-tree", str(target)])
        if private.seed and Path(private.path).is_dir():
            seed_folder(private, target)


def tree_mounts(folder: Path) -> list[Path]:
    """Mount points at or under folder in this namespace, innermost first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # The mount point is the fifth field, with spaces and such as \040.
        field = line.split()[4]
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field))
        if point.is_relative_to(folder):
            points.append(point)
    return sorted(points, key=lambda point: len(point.parts), reverse=True)


def unmount_trees(folder: Path) -> None:
    """Unmount the hosts' in-memory folders under folder, also those of a run
    that crashed, once their processes are gone."""
    points = tree_mounts(folder)
    if points:
        # Lazily: a shell of yours inside the tree must not make down() fail;
        # the folder is empty for the next up() all the same.
        run_local(["umount", "--lazy", *map(str, points)])


def ensure_mount_points() -> None:
    """Bind mounts need their target to exist on the control machine."""
    for private in PRIVATE_DIRS:
        Path(private.path).mkdir(parents=True, exist_ok=True)


def _hidden_by_tmpfs(path: Path) -> str | None:
    for tmpfs in TMPFS_DIRS:
        if path.is_relative_to(tmpfs):
            return tmpfs
    return None


def check_workdir(workdir: Path) -> None:
    # A workdir under /tmp is brought back over the fresh /tmp (see init_script);
    # one under /run cannot be, since /run is where it would be stashed.
    if workdir.is_relative_to("/run"):
        raise LabError(
            f"lab workdir {workdir} is under /run, which every host replaces with "
            "an empty tmpfs; pick a folder elsewhere (e.g. under /tmp or the repo)"
        )


def init_script(files: Path, workdir: Path) -> str:
    """Shell code the host's init runs inside its new mount namespace."""
    q = shlex.quote
    lines = ["set -eu"]
    for private in sorted(PRIVATE_DIRS, key=lambda p: p.path.count("/")):
        source = files / private.path.lstrip("/")
        lines.append(f"mount --bind {q(str(source))} {q(private.path)}")
    lines.append("mount -t tmpfs -o mode=0755 lab-run /run")

    # The lab's own files (sshd config, keys, build contexts) must stay visible.
    stash = "/run/lab-workdir"
    under_tmp = workdir.is_relative_to("/tmp")
    if under_tmp:
        lines.append(f"mkdir {stash} && mount --bind {q(str(workdir))} {stash}")
    lines.append("mount -t tmpfs -o mode=1777 lab-tmp /tmp")
    if under_tmp:
        lines.append(f"mkdir -p {q(str(workdir))}")
        lines.append(f"mount --move {stash} {q(str(workdir))} && rmdir {stash}")

    # Debian's sshd refuses to start without its privilege separation folder.
    lines.append("mkdir -p /run/sshd && chmod 0755 /run/sshd")
    lines.append("echo ready")
    lines.append("exec sleep infinity </dev/null >/dev/null 2>&1")
    return "\n".join(lines)


def start_init(netns_path: Path, script: str, host_name: str) -> subprocess.Popen[str]:
    """Start the host's init and wait until its mounts are in place."""
    # nsenter, not `ip netns exec`: the latter remounts /sys and hides the
    # cgroup tree, and dockerd then fails to start.
    argv = [
        "nsenter",
        f"--net={netns_path}",
        "--",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(CLEAN_ENV),
        start_new_session=True,
        cwd="/",
    )
    assert process.stdout is not None and process.stderr is not None
    first_line = process.stdout.readline().strip()
    if first_line != "ready":
        process.kill()
        process.wait()
        raise LabError(
            f"host {host_name}: init failed before mounting its folders: "
            f"{process.stderr.read().strip() or 'no output'}"
        )
    process.stdout.close()
    process.stderr.close()
    return process


@dataclass
class LabHost:
    """A machine of the lab, reachable over SSH at `address`.

    files is the host's private tree on the control machine: /etc/docker inside
    the host is files / "etc/docker" here.
    """

    name: str
    address: str
    docker: bool
    files: Path

    @property
    def address6(self) -> str:
        """The host's IPv6 address, beside ``address`` on the same link."""
        return ipv6_address(self.address)

    @property
    def home(self) -> Path:
        """Folder holding this host's pid file, configs and logs."""
        return self.files.parent

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def init_pid(self) -> int:
        """Pid of the process whose namespaces define this host."""
        pid_file = self.home / "init.pid"
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            raise LabError(
                f"host {self.name} is not up ({pid_file} missing); run Lab.up()"
            ) from None
        own_mounts = os.readlink("/proc/self/ns/mnt")
        try:
            alive = os.readlink(f"/proc/{pid}/ns/mnt") != own_mounts
        except OSError:
            alive = False
        if not alive:
            raise LabError(
                f"host {self.name}: its init (pid {pid}) is gone; bring the lab "
                "up again with Lab.up() or `python -m tests.lab up`"
            )
        return pid

    def run(
        self,
        command: str,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a bash command inside this host as root and capture its output.

        It enters the host's net and mount namespaces, as an SSH session would,
        but with a fixed PATH and no login profile. A command that leaves a
        daemon behind must redirect its stdin/stdout/stderr, or this waits for it.
        """
        argv = [
            "nsenter",
            "-t",
            str(self.init_pid()),
            "-n",
            "-m",
            "--wd=/root",
            "--",
            "/bin/bash",
            "-c",
            command,
        ]
        where = f"host {self.name}"
        try:
            result = run_local(
                argv,
                where=where,
                check=False,
                timeout=timeout,
                input=input,
                env=CLEAN_ENV,
            )
        except LabCommandTimeout as error:
            raise LabCommandTimeout(where, command, timeout) from error
        result.args = command
        if check and result.returncode != 0:
            raise LabCommandError(
                where, command, result.returncode, result.stdout, result.stderr
            )
        return result
