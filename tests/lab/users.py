"""Login users of lab hosts, made in each host's own /etc with one id on all."""

from __future__ import annotations

import grp
import itertools
import pwd
import shlex
from collections.abc import Sequence
from pathlib import Path

from .host import LabHost

#: Debian's UID_MIN and GID_MIN: where login users' ids start.
FIRST_ID = 1000


def _ids(path: Path) -> dict[str, int]:
    """Each name of a passwd or group file with its id (the third field)."""
    ids: dict[str, int] = {}
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit():
            ids[fields[0]] = int(fields[2])
    return ids


def choose_id(hosts: Sequence[LabHost], user: str) -> int:
    """The uid ``user`` has on the hosts that have it already, else one free on
    every host, as uid and as gid, so that the user's files look the same on all.

    The ids this machine uses are avoided too, so that `ls -l` of a host's tree
    here does not name one of this machine's users as the owner.
    """
    taken = {entry.pw_uid for entry in pwd.getpwall()}
    taken |= {entry.gr_gid for entry in grp.getgrall()}
    for host in hosts:
        users = _ids(host.files / "etc/passwd")
        if user in users:
            return users[user]
        taken |= set(users.values()) | set(_ids(host.files / "etc/group").values())
    return next(uid for uid in itertools.count(FIRST_ID) if uid not in taken)


def add_user(host: LabHost, user: str, uid: int) -> None:
    """Make ``user`` (group too) with ``uid`` on ``host`` unless it has the user,
    and its home. useradd also gives it subordinate ids, for rootless Docker."""
    name = shlex.quote(user)
    host.run(
        "set -e\n"
        f"if ! id -u {name} >/dev/null 2>&1; then\n"
        f"  groupadd --gid {uid} {name}\n"
        f"  useradd --uid {uid} --gid {uid} --no-create-home --shell /bin/sh {name}\n"
        "fi\n"
        f"home=$(getent passwd {name} | cut -d: -f6)\n"
        f'mkdir -p "$home" && chown {name}: "$home" && chmod 0700 "$home"\n'
    )
