"""The Lab: several SSH-reachable hosts, some running Docker, on this machine."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import yaml

from . import daemons, images, network, processes, users
from .configs import fabric_config_text, ssh_config_text
from .errors import LabError
from .host import (
    LabHost,
    check_workdir,
    ensure_mount_points,
    init_script,
    prepare_file_tree,
    start_init,
    unmount_trees,
)

logger = logging.getLogger("tests.lab")

HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
FIRST_HOST_OCTET = 2
LAST_HOST_OCTET = 254
T = TypeVar("T")


def _in_parallel(function: Callable[[T], object], items: Iterable[T]) -> None:
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        # list() re-raises the first failure here rather than losing it.
        list(pool.map(function, items))


class Lab:
    """Hosts in network + mount namespaces, joined by a bridge on subnet.0/24.

    The bridge takes .1 (the control machine's address as seen by hosts); hosts
    take .2, .3, ... in the order given to up(). Kernel objects are named from
    prefix ("reglab-registry" netns, "reglab0" bridge), so down() finds what a
    crashed run left behind.
    """

    def __init__(
        self,
        workdir: Path,
        subnet: str | None = None,
        prefix: str | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        check_workdir(self.workdir)
        if re.search(r"\s", str(self.workdir)):
            raise LabError(
                f"lab workdir {self.workdir!r} contains whitespace, which sshd_config "
                "cannot quote; pick another folder"
            )
        chosen = subnet or os.environ.get("LAB_SUBNET") or network.DEFAULT_SUBNET
        self.subnet = network.parse_subnet(chosen)
        self.naming = network.Naming(
            prefix or os.environ.get("LAB_PREFIX") or network.DEFAULT_PREFIX
        )
        self.ssh_key = self.workdir / "keys" / "id_ed25519"
        self.known_hosts = self.workdir / "ssh" / "known_hosts"
        self._inits: dict[str, subprocess.Popen[str]] = {}
        self._hosts = self._load_state()

    # State lets another process (the CLI, a test session) use a running lab.

    @property
    def _state_file(self) -> Path:
        return self.workdir / "state.json"

    def _load_state(self) -> list[LabHost]:
        try:
            state = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return []
        return [
            self._make_host(entry["name"], entry["address"], entry["docker"])
            for entry in state.get("hosts", [])
        ]

    def _save_state(self) -> None:
        hosts = [
            {"name": h.name, "address": h.address, "docker": h.docker}
            for h in self._hosts
        ]
        state = {"prefix": self.naming.prefix, "subnet": self.subnet, "hosts": hosts}
        self._state_file.write_text(json.dumps(state, indent=2) + "\n")

    def _make_host(self, name: str, address: str, docker: bool) -> LabHost:
        files = self.workdir / "hosts" / name / "fs"
        return LabHost(name=name, address=address, docker=docker, files=files)

    # Bringing hosts up and down.

    def _check_specs(self, specs: list[tuple[str, bool]]) -> None:
        names = [name for name, _ in specs]
        for name in names:
            if not HOST_NAME.fullmatch(name):
                raise LabError(
                    f"lab host name {name!r} must be lowercase letters, digits and "
                    "dashes (1-31 characters), starting with a letter"
                )
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise LabError(f"lab host names repeat: {', '.join(duplicates)}")
        if len(specs) > LAST_HOST_OCTET - FIRST_HOST_OCTET + 1:
            raise LabError(f"a /24 lab holds at most 253 hosts, not {len(specs)}")

    def _prepare_workdir(self) -> None:
        # Host trees start empty at every up(): a file a test left in
        # /etc/docker must not decide the next run. Keys survive, so a user's
        # known_hosts from a previous run stays valid.
        shutil.rmtree(self.workdir / "hosts", ignore_errors=True)
        for folder in ("keys", "ssh", "images", "hosts"):
            (self.workdir / folder).mkdir(parents=True, exist_ok=True)
        daemons.ensure_key(self.ssh_key, "tests.lab client")
        self.known_hosts.write_text("")

    def up(self, hosts: list[tuple[str, bool]]) -> None:
        """Bring up hosts [(name, with_docker)], after clearing any previous lab.

        Returns once every sshd accepts connections and every dockerd answers
        `docker info`. On failure the half-built lab is torn down again; logs
        stay under workdir/hosts/NAME/logs.
        """
        self._check_specs(hosts)
        self.down()
        self._prepare_workdir()
        self._hosts = [
            self._make_host(name, f"{self.subnet}.{FIRST_HOST_OCTET + index}", docker)
            for index, (name, docker) in enumerate(hosts)
        ]
        self._save_state()
        try:
            self._start_hosts()
        except BaseException:
            self.down()
            raise
        self.ssh_config()
        self.fabric_config()

    def _start_hosts(self) -> None:
        ensure_mount_points()
        network.create_bridge(self.naming, self.subnet)
        network.allow_bridge_forwarding(self.naming)
        # `ip netns add` is not safe to run concurrently (it sets up /run/netns
        # on first use), and each call takes milliseconds anyway.
        for index, host in enumerate(self._hosts):
            network.create_host_network(self.naming, index, host.name, host.address)
            daemons.ensure_key(self._host_key(host), f"tests.lab host {host.name}")
        _in_parallel(self._boot, self._hosts)
        _in_parallel(self._wait_ready, self._hosts)

    def _host_key(self, host: LabHost) -> Path:
        return self.workdir / "keys" / f"{host.name}_host_ed25519"

    def _boot(self, host: LabHost) -> None:
        prepare_file_tree(host.files)
        host.logs.mkdir(parents=True, exist_ok=True)
        netns_path = network.NETNS_DIR / self.naming.netns(host.name)
        init = start_init(netns_path, init_script(host.files, self.workdir), host.name)
        self._inits[host.name] = init
        (host.home / "init.pid").write_text(f"{init.pid}\n")
        daemons.write_sshd_config(
            host, self._host_key(host), self.ssh_key.with_suffix(".pub")
        )
        daemons.start_sshd(host)
        if host.docker:
            daemons.start_dockerd(host, self.naming.cgroup(host.name))

    def _wait_ready(self, host: LabHost) -> None:
        daemons.wait_for_port(host, daemons.SSH_PORT, open_=True)
        if host.docker:
            daemons.wait_for_dockerd(host)

    def down(self) -> None:
        """Kill every lab process, then delete namespaces, veths and the bridge,
        and unmount the hosts' in-memory folders.

        Works from names alone, so it also clears what a crashed or killed run
        left, and is safe to call twice.
        """
        namespaces = network.lab_namespaces(self.naming)
        cgroup_prefix = self.naming.cgroup_prefix

        def lab_pids() -> set[int]:
            pids = processes.cgroup_pids(processes.lab_cgroups(cgroup_prefix))
            for netns in namespaces:
                pids |= processes.netns_pids(network.NETNS_DIR / netns)
            return pids

        processes.kill_until_gone(lab_pids, f"lab {self.naming.prefix}")
        for init in self._inits.values():
            init.wait()
        self._inits.clear()
        processes.remove_cgroups(processes.lab_cgroups(cgroup_prefix))
        for netns in namespaces:
            network.delete_namespace(netns)
        network.delete_links(self.naming)
        network.remove_bridge_forwarding(self.naming)
        unmount_trees(self.workdir / "hosts")
        for host in self._hosts:
            (host.home / "init.pid").unlink(missing_ok=True)
        self._state_file.unlink(missing_ok=True)
        self._hosts = []

    # Looking hosts up.

    def host(self, name: str) -> LabHost:
        for host in self._hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self._hosts) or "none (lab is down)"
        raise LabError(f"no lab host named {name!r}; hosts: {known}")

    @property
    def hosts(self) -> list[LabHost]:
        return list(self._hosts)

    # Files for the tools under test.

    def ssh_config(self) -> Path:
        """Write an OpenSSH client config so `ssh -F PATH registry` works."""
        path = self.workdir / "ssh" / "config"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ssh_config_text(self._hosts, self.ssh_key, self.known_hosts))
        return path

    def fabric_config(self) -> Path:
        """Write a Fabric runtime config (`fab -f PATH`) using the lab's key."""
        path = self.workdir / "fabric.yaml"
        path.write_text(fabric_config_text(self.ssh_key, self.known_hosts))
        return path

    def write_inventory(self, folder: Path) -> Path:
        """Write an inventory.yaml for this lab into ``folder``: the host named
        registry is the registry, every other host a client."""
        registry = self.host("registry")
        document = {
            "registry": {"address": registry.address, "port": 5000},
            "clients": [host.address for host in self._hosts if host is not registry],
        }
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "inventory.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    # Faults for tests.

    def stop_sshd(self, name: str) -> None:
        daemons.stop_sshd(self.host(name))

    def start_sshd(self, name: str) -> None:
        host = self.host(name)
        daemons.start_sshd(host)
        daemons.wait_for_port(host, daemons.SSH_PORT, open_=True)

    def stop_dockerd(self, name: str) -> None:
        daemons.stop_dockerd(self.host(name))

    def start_dockerd(self, name: str) -> None:
        host = self.host(name)
        daemons.start_dockerd(host, self.naming.cgroup(name))
        daemons.wait_for_dockerd(host)

    def ensure_user(self, role: str) -> str:
        """A login user named for this lab and ``role`` on every host; return its name.

        Each host has its own /etc, so useradd runs inside every host, with one
        uid on all, and never on the control machine; the user goes with the
        hosts' /etc at down(). The lab's prefix keeps its name apart from the
        users copied from this machine's /etc. Each host has its own /home.
        """
        user = f"{self.naming.prefix}-{role}"
        uid = users.choose_id(self._hosts, user)
        for host in self._hosts:
            users.add_user(host, user, uid)
        return user

    def start_rootless_docker(self, name: str, user: str) -> str:
        """Start ``user``'s rootless Docker on host ``name``; return its DOCKER_HOST."""
        return daemons.start_rootless_dockerd(self.host(name), user)

    def stop_rootless_docker(self, name: str, user: str) -> None:
        daemons.stop_rootless_dockerd(self.host(name), user)

    # Images.

    def registry_image_archive(self) -> Path:
        """Return a `docker save` tarball of registry:2, built once and cached."""
        builders = [host for host in self._hosts if host.docker]
        if not builders:
            raise LabError(
                "registry_image_archive() needs a lab host with docker; "
                "bring one up first"
            )
        return images.registry_archive(self.workdir / "images", builders[0])

    def build_test_image(self, name: str, tag: str) -> str:
        """Build a tiny, unique image tagged tag on host name; return its id."""
        return images.build_test_image(self.host(name), tag)
