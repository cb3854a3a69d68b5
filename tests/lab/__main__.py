"""Command line: `python -m tests.lab up|down|status|selfcheck [--workdir DIR]`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from . import daemons
from .errors import LabError
from .lab import Lab

DEFAULT_WORKDIR = Path(__file__).resolve().parents[2] / ".lab"
DEFAULT_HOSTS = [("registry", True), ("client1", True), ("client2", False)]


def _print_hosts(lab: Lab) -> None:
    print(f"{'name':<12}{'address':<16}docker")
    for host in lab.hosts:
        print(f"{host.name:<12}{host.address:<16}{'yes' if host.docker else 'no'}")


def command_up(lab: Lab) -> None:
    started = time.monotonic()
    lab.up(DEFAULT_HOSTS)
    # The lab cannot pull images: setup-registry uploads this archive instead.
    archive = lab.registry_image_archive()
    workspace = lab.workdir / "workspace"
    earlier_pki = (workspace / "pki").exists()
    inventory = lab.write_inventory(workspace)
    print(f"lab up in {time.monotonic() - started:.1f}s\n")
    _print_hosts(lab)
    print(f"\nssh config:    {lab.ssh_config()}   (ssh -F PATH registry)")
    print(f"fabric config: {lab.fabric_config()}   (fab -f PATH ...)")
    print(f"ssh key:       {lab.ssh_key}")
    print(f"inventory:     {inventory}")
    project = Path(__file__).resolve().parents[2]
    fab = f"fab --search-root {project} -f {lab.fabric_config()}"
    # Lab clients cannot pull anything: one small image to push, ready on client1.
    image = f"{lab.host('registry').address}:5000/lab/hello:1"
    lab.build_test_image("client1", image)
    if earlier_pki:
        print(
            f"\nnote: {workspace}/pki is from an earlier lab and is reused (its CA "
            "and any rotation in progress); remove it for a fresh start"
        )
    print(
        "\ntry the tasks by hand, from the folder that holds the inventory:\n"
        f"  . {project}/.venv/bin/activate && cd {workspace}\n"
        f"  {fab} setup-registry --image-archive {archive}\n"
        f"  {fab} trust-clients\n"
        f"  {fab} status\n"
        f"  ssh -F {lab.ssh_config()} client1 docker push {image}"
    )


def command_down(lab: Lab) -> None:
    lab.down()
    print("lab down: namespaces, processes, links, bridge and mounts removed")


def _describe(lab: Lab, name: str) -> str:
    host = lab.host(name)
    try:
        host.init_pid()
    except LabError:
        return "down"
    sshd = (
        "sshd up" if daemons.port_open(host.address, daemons.SSH_PORT) else "sshd down"
    )
    if not host.docker:
        return sshd
    answered = host.run("docker info >/dev/null 2>&1", check=False).returncode == 0
    return f"{sshd}, dockerd {'up' if answered else 'down'}"


def command_status(lab: Lab) -> None:
    if not lab.hosts:
        print(f"no lab recorded in {lab.workdir}")
        return
    print(f"{'name':<12}{'address':<16}{'docker':<8}state")
    for host in lab.hosts:
        docker = "yes" if host.docker else "no"
        print(
            f"{host.name:<12}{host.address:<16}{docker:<8}{_describe(lab, host.name)}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__)
    parser.add_argument(
        "command", choices=["up", "down", "status", "selfcheck"], help="what to do"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"lab state folder (default: {DEFAULT_WORKDIR})",
    )
    parser.add_argument("--verbose", action="store_true", help="log every command")
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if options.verbose else logging.WARNING,
        format="%(levelname)s %(message)s",
    )
    try:
        lab = Lab(options.workdir)
        if options.command == "selfcheck":
            from .selfcheck import run_selfcheck

            return run_selfcheck(lab)
        {"up": command_up, "down": command_down, "status": command_status}[
            options.command
        ](lab)
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
