"""Start and stop the sshd and dockerd of a lab host, inside its namespaces."""

from __future__ import annotations

import shlex
import socket
import time
from pathlib import Path

from .commands import run_local
from .errors import LabError
from .host import LabHost

SSHD = "/usr/sbin/sshd"
SSH_PORT = 22
DOCKERD_TIMEOUT = 60.0


def ensure_key(path: Path, comment: str) -> None:
    """Create an ed25519 key without passphrase at path unless one is there."""
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    run_local(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
    )


def write_sshd_config(host: LabHost, host_key: Path, authorized_keys: Path) -> Path:
    config = host.home / "sshd_config"
    config.write_text(
        f"# sshd of lab host {host.name}; written by tests.lab at every up().\n"
        f"ListenAddress {host.address}:{SSH_PORT}\n"
        f"HostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized_keys}\n"
        "PidFile /run/sshd.pid\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        # The key files live in a lab folder whose owner and modes sshd must
        # not judge.
        "StrictModes no\n"
        "Subsystem sftp internal-sftp\n"
        "UseDNS no\n"
        "PrintMotd no\n"
        "PrintLastLog no\n"
        "X11Forwarding no\n"
        # Tests open many connections at once; the default 10:30:100 drops some.
        "MaxStartups 200\n"
        "MaxSessions 100\n"
    )
    return config


def port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: LabHost, port: int, open_: bool, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while port_open(host.address, port) != open_:
        if time.monotonic() > deadline:
            state = "accept" if open_ else "refuse"
            raise LabError(
                f"host {host.name}: {host.address}:{port} did not {state} "
                f"connections within {timeout:g}s; see logs in {host.logs}"
            )
        time.sleep(0.05)


def start_sshd(host: LabHost) -> None:
    """Start sshd unless it runs; returns before it listens (see wait_for_port)."""
    config, log = host.home / "sshd_config", host.logs / "sshd.log"
    host.run(
        'if [ -s /run/sshd.pid ] && kill -0 "$(cat /run/sshd.pid)" 2>/dev/null;'
        f" then exit 0; fi; {SSHD} -f {shlex.quote(str(config))}"
        f" -E {shlex.quote(str(log))}"
    )


def stop_sshd(host: LabHost) -> None:
    """Stop the listening sshd; sessions already open stay, as on a real host."""
    host.run('if [ -s /run/sshd.pid ]; then kill "$(cat /run/sshd.pid)"; fi')
    wait_for_port(host, SSH_PORT, open_=False)


def _dockerd_command(host: LabHost, cgroup_parent: str) -> str:
    # dockerd starts its own containerd under --exec-root, so /run (a tmpfs of
    # this host) holds every socket; the default /run/docker.sock is what tools
    # over SSH expect.
    arguments = [
        "dockerd",
        "--data-root=/var/lib/docker",
        "--exec-root=/run/docker",
        "--host=unix:///run/docker.sock",
        "--pidfile=/run/docker.pid",
        f"--cgroup-parent=/{cgroup_parent}",
    ]
    log = shlex.quote(str(host.logs / "dockerd.log"))
    return f"setsid {shlex.join(arguments)} </dev/null >>{log} 2>&1 &"


def start_dockerd(host: LabHost, cgroup_parent: str) -> None:
    """Start dockerd unless it runs; see wait_for_dockerd for readiness."""
    if not host.docker:
        raise LabError(f"host {host.name} was brought up without docker")
    host.run(
        'if [ -s /run/docker.pid ] && kill -0 "$(cat /run/docker.pid)" 2>/dev/null;'
        f" then exit 0; fi; {_dockerd_command(host, cgroup_parent)}"
    )


def wait_for_dockerd(host: LabHost, timeout: float = DOCKERD_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while host.run("docker info >/dev/null 2>&1", check=False).returncode != 0:
        if time.monotonic() > deadline:
            log = host.logs / "dockerd.log"
            tail = (
                log.read_text(errors="replace").splitlines()[-15:]
                if log.exists()
                else []
            )
            raise LabError(
                f"host {host.name}: dockerd did not answer `docker info` within "
                f"{timeout:g}s; last lines of {log}:\n" + "\n".join(tail)
            )
        time.sleep(0.1)


def stop_dockerd(host: LabHost, timeout: float = 30) -> None:
    """Stop dockerd as a service manager would: SIGTERM, then SIGKILL if it hangs."""
    host.run(
        "pid=$(cat /run/docker.pid 2>/dev/null) || exit 0\n"
        'kill "$pid" 2>/dev/null || exit 0\n'
        f"for _ in $(seq {int(timeout * 10)}); do\n"
        '  kill -0 "$pid" 2>/dev/null || exit 0\n'
        "  sleep 0.1\n"
        "done\n"
        'kill -9 "$pid"\n',
        timeout=timeout + 10,
    )


#: Debian's rootless Docker launcher (docker.io ships it, not on PATH).
ROOTLESS_LAUNCHER = "/usr/share/docker.io/contrib/dockerd-rootless.sh"


def start_rootless_dockerd(
    host: LabHost, user: str, timeout: float = DOCKERD_TIMEOUT
) -> str:
    """Start ``user``'s rootless Docker on ``host``; return its DOCKER_HOST.

    rootlesskit opens /dev/net/tun as the user: Debian makes the device 0666, some
    machines 0600, so the host gets its own 0666 node over it (its mount namespace
    only).
    """
    name = shlex.quote(user)
    log = shlex.quote(str(host.logs / f"dockerd-rootless-{user}.log"))
    host.run(
        f"home=$(getent passwd {name} | cut -d: -f6)\n"
        f"run=/run/user/$(id -u {name})\n"
        f'mkdir -p "$run" && chown {name}: "$run" && chmod 0700 "$run"\n'
        "if [ ! -e /run/lab-tun ]; then\n"
        "  mknod /run/lab-tun c 10 200 && chmod 0666 /run/lab-tun\n"
        "  mount --bind /run/lab-tun /dev/net/tun\n"
        "fi\n"
        # No subshell: one left waiting in the background would hold our stdout.
        "cd /\n"
        f'runuser -u {name} -- env -i HOME="$home" XDG_RUNTIME_DIR="$run" '
        "PATH=/usr/share/docker.io/contrib:/usr/sbin:/usr/bin:/sbin:/bin "
        f"setsid {ROOTLESS_LAUNCHER} </dev/null >>{log} 2>&1 &\n"
        f"echo $! >/run/lab-rootless-{user}.pid\n"
    )
    docker_host = f"unix:///run/user/{_uid(host, user)}/docker.sock"
    deadline = time.monotonic() + timeout
    while True:
        answered = host.run(
            f"cd / && runuser -u {name} -- env DOCKER_HOST={docker_host} "
            "docker info >/dev/null 2>&1",
            check=False,
        )
        if answered.returncode == 0:
            return docker_host
        if time.monotonic() > deadline:
            raise LabError(
                f"host {host.name}: rootless dockerd of {user} did not answer within "
                f"{timeout:g}s; see {host.logs / f'dockerd-rootless-{user}.log'}"
            )
        time.sleep(0.2)


def stop_rootless_dockerd(host: LabHost, user: str, timeout: float = 30) -> None:
    """Stop ``user``'s rootless Docker: rootlesskit takes its child down with it."""
    host.run(
        f"pid=$(cat /run/lab-rootless-{user}.pid 2>/dev/null) || exit 0\n"
        'kill "$pid" 2>/dev/null || exit 0\n'
        f"for _ in $(seq {int(timeout * 10)}); do\n"
        '  kill -0 "$pid" 2>/dev/null || exit 0\n'
        "  sleep 0.1\n"
        "done\n"
        'kill -9 "$pid"\n',
        timeout=timeout + 10,
    )


def _uid(host: LabHost, user: str) -> int:
    return int(host.run(f"id -u {shlex.quote(user)}").stdout.strip())
