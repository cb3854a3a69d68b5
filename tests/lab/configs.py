"""Client configuration files that point tools under test at the lab."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .host import LabHost


def _quoted(path: Path) -> str:
    # A JSON string is also a valid double-quoted YAML and ssh_config string.
    return json.dumps(str(path))


def ssh_config_text(hosts: Iterable[LabHost], key: Path, known_hosts: Path) -> str:
    lines = ["# OpenSSH client config for the lab; written by tests.lab at up()."]
    for host in hosts:
        lines += [
            "",
            f"Host {host.name} {host.address}",
            f"    HostName {host.address}",
            "    User root",
            f"    IdentityFile {_quoted(key)}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {_quoted(known_hosts)}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking accept-new",
            "    BatchMode yes",
            "    ConnectTimeout 10",
            "    LogLevel ERROR",
        ]
    return "\n".join(lines) + "\n"


def fabric_config_text(key: Path, known_hosts: Path) -> str:
    # Paramiko ignores Include lines and ssh_config tricks, so everything it
    # needs is given here directly.
    return (
        "# Fabric runtime config for the lab (fab -f THIS); written by tests.lab.\n"
        "user: root\n"
        "connect_kwargs:\n"
        "  key_filename:\n"
        f"    - {_quoted(key)}\n"
        "  look_for_keys: false\n"
        "  allow_agent: false\n"
        "timeouts:\n"
        "  connect: 10\n"
        "fleet:\n"
        f"  known_hosts: {_quoted(known_hosts)}\n"
    )
