"""Registry users: an htpasswd file of bcrypt hashes on the registry host.

The registry accepts bcrypt and nothing else: an htpasswd line in the default MD5
scheme (``$apr1$``) makes every login fail with "invalid authorization credential", and
the ``htpasswd`` program is no longer inside the registry image. So the file is made
here, with the ``bcrypt`` library, and every line is checked to be bcrypt.
"""

from __future__ import annotations

import getpass
import re
import shlex
import sys
from pathlib import Path

import bcrypt
from fabric import Connection, task
from invoke.context import Context

from .errors import HostError, InputError
from .localfiles import check_regular_file
from .options import DEFAULT_PKI_DIR, HELP_INVENTORY, HELP_PKI_DIR
from .pki import StateFolder
from .registry import Probe, RegistrySpec, certify_and_deploy, open_registry
from .remote import (
    RemoteFile,
    failure_line,
    host_label,
    render_put_files,
    run_as_root,
    script_header,
)
from .report import finish, log, user_errors

#: bcrypt's cost: every request to the registry checks the password, so this trades
#: a little brute-force resistance for pulls that do not crawl.
BCRYPT_ROUNDS = 10
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", re.ASCII)
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


def check_user_name(name: str) -> str:
    """A name the htpasswd format and docker login both take."""
    if not USER_NAME.fullmatch(name or ""):
        raise InputError(
            f"--name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-' "
            "(no ':' or spaces)"
        )
    return name


def parse_htpasswd(
    text: str, where: str, changing: str | None = None
) -> dict[str, str]:
    """Read ``user:hash`` lines, refusing any hash the registry would reject.

    The line of ``changing``, the user being set or removed, may be one: it is about
    to be replaced, which is the fix.
    """
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, separator, hashed = line.partition(":")
        if not separator:
            raise InputError(f"{where} line {number}: not a user:hash line; fix it")
        if not hashed.startswith(BCRYPT_PREFIXES) and name != changing:
            raise InputError(
                f"{where} line {number}: user {name!r} has a non-bcrypt hash, which "
                "the registry rejects; set the password again with add-user"
            )
        users[name] = hashed
    return users


def render_htpasswd(users: dict[str, str]) -> str:
    return "".join(f"{name}:{hashed}\n" for name, hashed in sorted(users.items()))


def hash_password(password: str) -> str:
    """A bcrypt hash in the ``$2y$`` form Apache's htpasswd writes."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS))
    return "$2y$" + hashed.decode()[4:]


def password_matches(password: str, hashed: str) -> bool:
    if not hashed.startswith(BCRYPT_PREFIXES):
        return False
    candidate = "$2b$" + hashed[4:] if hashed.startswith("$2y$") else hashed
    return bcrypt.checkpw(password.encode(), candidate.encode())


def read_password(password_file: str | None, name: str, confirm: bool = True) -> str:
    """The password from a file (first line) or a prompt, never the command line.

    ``confirm``: a new password is typed twice; one to log in with, once.
    """
    if password_file is not None:
        check_regular_file(Path(password_file), "--password-file", 64 * 1024)
        try:
            lines = Path(password_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(
                f"--password-file {password_file}: cannot read it: {exc}"
            ) from None
        password = lines[0] if lines else ""
    else:
        if not sys.stdin.isatty():
            raise InputError(
                f"no terminal to ask the password for {name}; pass --password-file FILE"
            )
        try:
            password = getpass.getpass(f"password for {name}: ")
            again = getpass.getpass("again: ") if confirm else password
        except EOFError:
            raise InputError(
                f"no terminal to ask the password for {name}; pass --password-file FILE"
            ) from None
        if again != password:
            raise InputError("the two passwords differ; run add-user again")
    if len(password) < 8:
        raise InputError(f"the password for {name} is shorter than 8 characters")
    if len(password.encode()) > 72:
        raise InputError(f"the password for {name} is longer than bcrypt's 72 bytes")
    return password


def _read_users(
    connection: Connection, spec: RegistrySpec, changing: str
) -> dict[str, str] | None:
    """The users file on the host; None when there is none (no login asked)."""
    path = shlex.quote(spec.htpasswd_path)
    result = run_as_root(
        connection,
        f"if [ -f {path} ]; then echo present; cat {path}; else echo absent; fi\n",
        what="read users",
    )
    host = host_label(connection)
    if not result.ok:
        raise HostError(
            host, f"cannot read {spec.htpasswd_path}: {failure_line(result)}"
        )
    state, _, text = result.stdout.partition("\n")
    if state.strip() == "absent":
        return None
    return parse_htpasswd(text, f"{host}: {spec.htpasswd_path}", changing)


def _write_users(
    connection: Connection, spec: RegistrySpec, users: dict[str, str]
) -> None:
    users_file = RemoteFile(spec.htpasswd_path, render_htpasswd(users).encode(), 0o600)
    result = run_as_root(
        connection,
        script_header(False) + render_put_files([users_file]),
        what="write users",
    )
    if not result.ok:
        raise HostError(
            host_label(connection),
            f"cannot write {spec.htpasswd_path}: {failure_line(result)}",
        )


USER_HELP = {
    "name": "The user's name (required): letters, digits, '.', '_', '@' or '-'.",
    "password_file": "Read the password (8 characters or more) from the first line "
    "of this file instead of a prompt.",
    "inventory": HELP_INVENTORY,
    "pki_dir": HELP_PKI_DIR,
}


@task(help=USER_HELP, auto_shortflags=False)
@user_errors
def add_user(
    c: Context,
    name: str | None = None,
    password_file: str | None = None,
    inventory: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
) -> None:
    """Add a registry user (or set a new password); the registry then asks for login.

    Keeps REMOTE_DIR/auth/htpasswd on the registry host with bcrypt hashes, the only
    kind the registry accepts. The first user switches the registry to htpasswd
    authentication (the container is recreated, data kept). The password comes from
    a prompt or --password-file, never from the command line, and is never logged.
    Then log the clients in: fab login-clients --name NAME. Safe to re-run.
    """
    _change_user(c, name, password_file, inventory, pki_dir, remove=False)


@task(
    help={key: USER_HELP[key] for key in ("name", "inventory", "pki_dir")},
    auto_shortflags=False,
)
@user_errors
def remove_user(
    c: Context,
    name: str | None = None,
    inventory: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
) -> None:
    """Remove a registry user; the registry restarts without them.

    Removing the last user keeps the login on with nobody allowed in, rather than
    opening the registry to everyone. Safe to re-run.
    """
    _change_user(c, name, None, inventory, pki_dir, remove=True)


def _change_user(
    c: Context,
    name: str | None,
    password_file: str | None,
    inventory: str | None,
    pki_dir: str,
    remove: bool,
) -> None:
    if name is None:
        raise InputError("--name: give the user's name, for example --name ci")
    check_user_name(name)
    password = None if remove else read_password(password_file, name)
    spec, connection = open_registry(c, inventory, pki_dir)
    state = StateFolder(Path(pki_dir))
    if not state.ca_cert_path.exists():
        raise InputError(
            f"{state.ca_cert_path}: no CA here; run setup-registry first, from "
            "this folder or with --pki-dir"
        )
    host = host_label(connection)

    def change_users(probe: Probe, live: RegistrySpec) -> list[str]:
        # Only once the host passed every check: a refused run changes nothing. The
        # users file is where the running registry reads it.
        found = _read_users(connection, live, name)
        users = found or {}
        note = _apply_change(users, name, password)
        if note is None:
            if remove:
                log.info("%s: no user %s to remove", host, name)
            return []
        _write_users(connection, live, users)
        if remove and not users:
            return [note, "no users left: nobody can log in; add-user lets someone in"]
        return [note]

    outcome = certify_and_deploy(
        spec, connection, state, existing_only=True, before_deploy=change_users
    )
    finish(
        [outcome],
        None
        if remove
        else f"fab login-clients --name {name} (docker login on clients)",
    )


def _apply_change(users: dict[str, str], name: str, password: str | None) -> str | None:
    """Change ``users`` in place; say what changed, None when nothing did."""
    if password is None:
        if users.pop(name, None) is None:
            return None
        return f"removed user {name}"
    current = users.get(name)
    if current is not None and password_matches(password, current):
        return None
    users[name] = hash_password(password)
    return f"{'set a new password for' if current else 'added'} user {name}"
