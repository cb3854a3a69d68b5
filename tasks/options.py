"""What tasks read before they connect: the inventory, the state folder, -H hosts."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from fabric import Connection

from .addresses import SshTarget, parse_ssh_target
from .errors import InputError
from .inventory import DEFAULT_INVENTORY, Inventory, host_identity, load_inventory

DEFAULT_PKI_DIR = "pki"

HELP_INVENTORY = "Inventory file to read; default: inventory.yaml in this folder."
HELP_PKI_DIR = "Folder of the CA and certificates on this machine; default: pki."


def read_inventory(option: str | None, required: bool) -> Inventory | None:
    """Load ``--inventory``, or ``inventory.yaml`` here when it exists.

    An inventory named on the command line must exist; the default one may be absent
    when the task has what it needs from its options.
    """
    if option is not None:
        return load_inventory(Path(option))
    default = Path(DEFAULT_INVENTORY)
    if default.exists() or required:
        return load_inventory(default)
    return None


def command_line_hosts(argv: Sequence[str] | None = None) -> list[str]:
    """The hosts given to ``fab`` with ``-H``/``--hosts``, in order.

    Fabric calls a task once per ``-H`` host. Tasks that work on many hosts at once
    (bounded parallelism, one recap, carrying on past a failed host) need the whole
    list at their first call, so they read it where Fabric read it.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    hosts: list[str] = []
    for index, arg in enumerate(args):
        value = None
        if arg in ("-H", "--hosts") and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith(("--hosts=", "-H=")):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-H") and len(arg) > 2 and not arg.startswith("--"):
            value = arg[2:]
        if value:
            hosts.extend(part for part in value.split(",") if part)
    return hosts


def targets_from_hosts(hosts: Sequence[str]) -> list[SshTarget]:
    """Parse ``-H`` host strings, naming the bad one; a host given twice runs once."""
    targets: list[SshTarget] = []
    seen: set[tuple[str, int]] = set()
    for host in hosts:
        target = parse_ssh_target(host, f"-H {host}")
        identity = (host_identity(target.host), target.port or 22)
        if identity not in seen:
            seen.add(identity)
            targets.append(target)
    return targets


def is_connection(context: object) -> bool:
    """Tell whether Fabric gave this task a host (``-H``) or only a context."""
    return isinstance(context, Connection)


def split_list(value: str | None, option: str) -> list[str] | None:
    """Read a comma-separated option such as ``--runtimes docker,podman``."""
    if value is None:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise InputError(f"{option}: give at least one value, e.g. {option} docker")
    return items


def shell_hint(*words: str) -> str:
    """A command for the user to copy, quoted for the shell."""
    return shlex.join(words)
