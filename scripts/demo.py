"""The main job end to end on the local lab, printing every command and its answer.

Brings up three hosts on this machine (a registry host and a client with dockerd, a
client with only skopeo and podman), then does what a user does with real servers:
setup-registry, trust-clients, push and pull. Run it with ``make demo``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from tests.lab import Lab  # noqa: E402

HOSTS = [("registry", True), ("client1", True), ("client2", False)]


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def fab(lab: Lab, workspace: Path, *args: str, expect_ok: bool = True) -> None:
    command = [str(Path(sys.executable).parent / "fab"), "--search-root", str(PROJECT),
               "-f", str(lab.fabric_config()), *args]  # fmt: skip
    # Shown as it can be pasted from the workspace, where the demo runs it.
    shown = [
        "fab", "--search-root", os.path.relpath(PROJECT, workspace),
        "-f", os.path.relpath(lab.fabric_config(), workspace),
        *(os.path.relpath(arg, workspace) if arg.startswith("/") else arg
          for arg in args),
    ]  # fmt: skip
    print(f"{workspace.relative_to(PROJECT)}$ {shlex.join(shown)}", flush=True)
    done = subprocess.run(command, cwd=workspace, check=False, stdin=subprocess.DEVNULL)
    if (done.returncode == 0) != expect_ok:
        sys.exit(f"demo failed: fab {' '.join(args)} exited {done.returncode}")


def on(lab: Lab, name: str, command: str, expect_ok: bool = True) -> None:
    print(f"{name}$ {command}", flush=True)
    done = lab.host(name).run(command, check=False, timeout=300)
    output = (done.stdout + done.stderr).strip()
    if output:
        print(textwrap.indent(output, "  "), flush=True)
    if (done.returncode == 0) != expect_ok:
        sys.exit(f"demo failed: {command!r} on {name} exited {done.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--keep", action="store_true", help="leave the lab up afterwards"
    )
    options = parser.parse_args()

    lab = Lab(PROJECT / ".lab")
    # Its own folder: the one make lab-up gives for trying the tasks by hand
    # (.lab/workspace, with its CA and backups) is left alone.
    workspace = PROJECT / ".lab" / "demo"
    shutil.rmtree(workspace, ignore_errors=True)
    say("bringing up the lab: hosts in network namespaces, each with sshd")
    lab.up(HOSTS)
    try:
        for host in lab.hosts:
            print(
                f"  {host.name:<9} {host.address:<12} dockerd: {'yes' if host.docker else 'no'}"
            )
        registry = lab.host("registry")
        authority = f"{registry.address}:5000"
        image = f"{authority}/demo/hello:1"
        inventory = lab.write_inventory(workspace)
        print(f"  inventory: {inventory}; state folder: {workspace / 'pki'}")

        archive = lab.registry_image_archive()
        say("1. the registry host: CA, IP-SAN certificate, registry:2 with TLS")
        print(
            "   (no image can be pulled here, so the image goes up as a docker save archive)"
        )
        fab(lab, workspace, "-H", registry.address, "setup-registry",
            "--image-archive", str(archive))  # fmt: skip

        say("before trust: a client refuses the registry's certificate")
        lab.build_test_image("client1", image)
        on(lab, "client1", f"docker push {image}", expect_ok=False)

        say("2. every client in inventory.yaml trusts the CA")
        fab(lab, workspace, "trust-clients")

        say("after trust: push and pull with docker, inspect with skopeo")
        on(lab, "client1", f"docker push {image} >/dev/null && echo pushed {image}")
        on(lab, "client1", f"docker rmi {image} >/dev/null && docker pull {image}")
        on(
            lab,
            "client2",
            f"skopeo inspect --format '{{{{.Name}}}} {{{{.Digest}}}}' docker://{image}",
        )

        say("running both again changes nothing")
        fab(lab, workspace, "-H", registry.address, "setup-registry")
        fab(lab, workspace, "trust-clients")
        say(
            "demo done: the registry serves TLS on a bare IP and every client trusts it"
        )
    finally:
        if options.keep:
            print(
                f"\nlab left up (make lab-down removes it); ssh -F {lab.ssh_config()} registry"
            )
        else:
            lab.down()
            # The demo's CA key has no use once its lab is gone.
            shutil.rmtree(workspace, ignore_errors=True)
            print("\nlab and its workspace (inventory, CA and keys) removed")


if __name__ == "__main__":
    main()
