"""End-to-end check of the lab itself: `python -m tests.lab selfcheck`.

Brings up three hosts, exercises SSH, Fabric, file isolation, the registry image
and published ports, then tears down and checks nothing is left. It also
recovers from a killed `up`. Prints timings; exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import network, processes
from .host import tree_mounts
from .lab import Lab

HOSTS = [("registry", True), ("client1", True), ("client2", False)]


class CheckFailed(AssertionError):
    pass


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _timed(label: str, step: Callable[[], object]) -> None:
    started = time.monotonic()
    step()
    print(f"ok   {label}  ({time.monotonic() - started:.2f}s)", flush=True)


def _check_ssh(lab: Lab) -> None:
    config = lab.ssh_config()
    for host in lab.hosts:
        result = subprocess.run(
            ["ssh", "-F", str(config), host.name, "hostname -I"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        _expect(
            result.returncode == 0 and host.address in result.stdout,
            f"ssh to {host.name} failed: {result.stderr.strip()}",
        )


def _check_fabric(lab: Lab) -> None:
    import fabric  # only the venv running the checks has it

    client1 = lab.host("client1")
    connection = fabric.Connection(
        client1.address,
        user="root",
        connect_kwargs={"key_filename": [str(lab.ssh_key)]},
    )
    with connection:
        result = connection.run("docker info --format '{{.Name}}'", hide=True)
    _expect(result.ok, f"fabric docker info on client1: {result.stderr}")


def _check_reachability(lab: Lab) -> None:
    # Host to host and control machine to host, each sshd.
    for source in lab.hosts:
        for target in lab.hosts:
            if source is not target:
                source.run(f"timeout 5 bash -c '</dev/tcp/{target.address}/22'")
    for host in lab.hosts:
        subprocess.run(
            ["bash", "-c", f"timeout 5 bash -c '</dev/tcp/{host.address}/22'"],
            check=True,
        )


def _check_isolation(lab: Lab) -> None:
    config = str(lab.ssh_config())
    folder = f"/etc/docker/certs.d/{lab.host('registry').address}:5000"
    subprocess.run(
        [
            "ssh",
            "-F",
            config,
            "client1",
            f"mkdir -p {folder} && echo lab > {folder}/ca.crt",
        ],
        check=True,
        timeout=30,
    )
    inside = lab.host("client1").files / folder.lstrip("/") / "ca.crt"
    _expect(inside.read_text() == "lab\n", f"client1's file not at {inside}")
    other = lab.host("client2").files / folder.lstrip("/")
    _expect(not other.exists(), f"client2 sees client1's file at {other}")
    _expect(not Path(folder).exists(), f"root namespace sees {folder}")
    seen = subprocess.run(
        ["ssh", "-F", config, "client2", f"test -e {folder}"], timeout=30
    )
    _expect(seen.returncode == 1, "client2 sees client1's certs.d over SSH")
    _expect(
        lab.host("client2").run("ls /tmp /run").stdout.count("docker") == 0,
        "client2 sees another host's /run",
    )


def _check_own_etc(lab: Lab) -> None:
    # A write to /etc itself, not to one of the folders tasks use, and a user:
    # each host has all of /etc to itself, so neither may leave client1.
    config = str(lab.ssh_config())
    probe = f"/etc/lab-probe-{os.getpid()}"
    subprocess.run(
        ["ssh", "-F", config, "client1", f"echo lab > {probe}"], check=True, timeout=30
    )
    inside = lab.host("client1").files / probe.lstrip("/")
    _expect(inside.read_text() == "lab\n", f"client1's {probe} not at {inside}")
    _expect(not Path(probe).exists(), f"the control machine sees client1's {probe}")
    other = lab.host("client2").files / probe.lstrip("/")
    _expect(not other.exists(), f"client2 sees client1's file at {other}")
    seen = subprocess.run(
        ["ssh", "-F", config, "client2", f"test -e {probe}"], timeout=30
    )
    _expect(seen.returncode == 1, f"client2 sees client1's {probe} over SSH")
    user = lab.ensure_user("probe")
    uids = {host.run(f"id -u {user}").stdout for host in lab.hosts}
    _expect(len(uids) == 1, f"{user} has different uids on the hosts: {uids}")
    try:
        pwd.getpwnam(user)
    except KeyError:
        return
    raise CheckFailed(f"lab user {user} was made on the control machine")


def _check_registry(lab: Lab) -> None:
    archive = lab.registry_image_archive()
    registry = lab.host("registry")
    for host in lab.hosts:
        if host.docker:
            loaded = host.run("docker image inspect registry:2", check=False)
            _expect(loaded.returncode != 0, f"{host.name} kept registry:2")
    registry.run(f"docker load -i {archive}")
    registry.run("docker run -d --name registry -p 5000:5000 registry:2")
    url = f"http://{registry.address}:5000/v2/"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                _expect(response.status == 200, f"{url} answered {response.status}")
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    subprocess.run(
        ["curl", "-fsS", "--max-time", "5", url], check=True, stdout=subprocess.DEVNULL
    )
    lab.host("client1").run(f"curl -fsS --max-time 5 {url}")


def _check_test_images(lab: Lab) -> None:
    tag = f"{lab.host('registry').address}:5000/lab/probe:1"
    first = lab.build_test_image("client1", tag)
    second = lab.build_test_image("client1", tag)
    _expect(first != second, "two test images got the same id")


def _check_faults(lab: Lab) -> None:
    registry = lab.host("registry")
    lab.stop_sshd("registry")
    refused = subprocess.run(
        ["bash", "-c", f"timeout 3 bash -c '</dev/tcp/{registry.address}/22'"],
        stderr=subprocess.DEVNULL,
    )
    _expect(refused.returncode != 0, "registry sshd still accepts after stop")
    lab.start_sshd("registry")
    lab.stop_dockerd("client1")
    stopped = lab.host("client1").run("docker info", check=False)
    _expect(stopped.returncode != 0, "client1 dockerd still answers after stop")
    lab.start_dockerd("client1")


def _check_nothing_left(lab: Lab) -> None:
    naming = lab.naming
    _expect(not network.lab_namespaces(naming), "lab namespaces remain")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True)
    _expect(naming.prefix not in links.stdout, "lab links remain")
    _expect(not processes.lab_cgroups(naming.cgroup_prefix), "lab cgroups remain")
    mounts = tree_mounts(lab.workdir / "hosts")
    _expect(not mounts, f"lab mounts remain: {mounts}")
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True)
    _expect(naming.bridge not in rules.stdout, "lab iptables rules remain")
    leftovers = subprocess.run(
        ["pgrep", "-f", str(lab.workdir)], capture_output=True, text=True
    )
    others = set(leftovers.stdout.split()) - {str(os.getpid())}
    _expect(not others, f"processes remain: {sorted(others)}")


def _kill_an_up_midway(lab: Lab) -> None:
    command = [sys.executable, "-m", "tests.lab", "up", "--workdir", str(lab.workdir)]
    repo = Path(__file__).resolve().parents[2]
    victim = subprocess.Popen(
        command,
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(0.6)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()


def run_selfcheck(lab: Lab) -> int:
    try:
        _timed("up 3 hosts", lambda: lab.up(HOSTS))
        _timed("ssh -F config to each host", lambda: _check_ssh(lab))
        _timed("fabric docker info on client1", lambda: _check_fabric(lab))
        _timed(
            "host<->host and control->host port 22", lambda: _check_reachability(lab)
        )
        _timed("file isolation", lambda: _check_isolation(lab))
        _timed("own /etc and users per host", lambda: _check_own_etc(lab))
        _timed(
            "registry archive, run, curl from root and client1",
            lambda: _check_registry(lab),
        )
        _timed("registry archive again (cached)", lab.registry_image_archive)
        _timed("two test images differ", lambda: _check_test_images(lab))
        _timed("stop/start sshd and dockerd", lambda: _check_faults(lab))
        _timed("down", lab.down)
        _timed("down again", lab.down)
        _timed("nothing left after down", lambda: _check_nothing_left(lab))
        _timed("kill an `up` midway", lambda: _kill_an_up_midway(lab))
        _timed("up after killed run", lambda: lab.up(HOSTS))
        _timed("ssh after killed run", lambda: _check_ssh(lab))
        _timed("down", lab.down)
        _timed("nothing left after down", lambda: _check_nothing_left(lab))
    except (CheckFailed, subprocess.CalledProcessError, OSError) as error:
        print(f"FAIL {error}", file=sys.stderr)
        lab.down()
        return 1
    except BaseException:
        lab.down()
        raise
    print("selfcheck passed")
    return 0
