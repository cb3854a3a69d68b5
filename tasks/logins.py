"""docker login on the clients, for a registry user made with add-user.

Docker keeps root's logins in /root/.docker/config.json: for each registry, base64 of
NAME:PASSWORD, unless a credential helper holds them. A client is read first and
logged in only when its entry differs, so a second run changes nothing. The login
itself is docker's own, so the registry checks the password on the way.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from fabric import Connection, task
from invoke.context import Context

from .clients import FleetRun, Registry, prepare_fleet_run, with_client
from .errors import HostError, InputError
from .inventory import Client
from .options import DEFAULT_PKI_DIR, HELP_INVENTORY, HELP_PKI_DIR
from .registry import check_tls
from .remote import failure_line, fan_out, run_as_root
from .report import (
    CHANGED,
    UNCHANGED,
    WOULD_CHANGE,
    Outcome,
    finish,
    hosts_text,
    log,
    log_outcome,
    user_errors,
)
from .users import check_user_name, read_password

#: root's docker config, whatever HOME sudo leaves: every script exports its folder.
DOCKER_CONFIG = "/root/.docker/config.json"
CONFIG_ENV = "DOCKER_CONFIG=/root/.docker; export DOCKER_CONFIG\n"


def expected_auth(name: str, password: str) -> str:
    """The ``auth`` value docker writes for a login: base64 of NAME:PASSWORD."""
    return base64.b64encode(f"{name}:{password}".encode()).decode("ascii")


@dataclass(frozen=True)
class LoginState:
    """What a client's docker knows of the registry's login."""

    docker: bool
    auth: str | None = None  # the stored NAME:PASSWORD, base64
    helper: str | None = None  # a credential helper that keeps it instead


def render_read_login() -> str:
    """Print whether docker is there, then its config file, base64 on one line."""
    path = shlex.quote(DOCKER_CONFIG)
    return (
        CONFIG_ENV
        + "command -v docker >/dev/null 2>&1 && echo docker || echo no-docker\n"
        f"[ -f {path} ] && base64 -w0 {path}; echo\n"
    )


def parse_login_state(output: str, registry: Registry, host: str) -> LoginState:
    """Read ``render_read_login``'s output for ``registry``."""
    first, _, rest = output.partition("\n")
    if first.strip() != "docker":
        return LoginState(docker=False)
    encoded = rest.strip()
    if not encoded:
        return LoginState(docker=True)
    try:
        config = json.loads(base64.b64decode(encoded))
    except (binascii.Error, ValueError):
        raise HostError(
            host,
            f"{DOCKER_CONFIG} is not valid JSON; fix or remove it, then run again",
        ) from None
    if not isinstance(config, Mapping):
        raise HostError(host, f"{DOCKER_CONFIG} is not a JSON object; fix it")
    helpers = config.get("credHelpers") or {}
    helper = helpers.get(registry.authority) if isinstance(helpers, Mapping) else None
    helper = helper or config.get("credsStore")
    auths = config.get("auths") or {}
    entry = auths.get(registry.authority) if isinstance(auths, Mapping) else None
    auth = entry.get("auth") if isinstance(entry, Mapping) else None
    return LoginState(
        docker=True,
        auth=auth if isinstance(auth, str) else None,
        helper=helper if isinstance(helper, str) else None,
    )


def render_login(registry: Registry, name: str, password: str) -> str:
    """``docker login`` with the password on its standard input, never in argv."""
    marker = f"PASSWORD_{secrets.token_hex(8)}"
    authority = shlex.quote(registry.authority)
    return (
        CONFIG_ENV + f"pw=$(cat <<'{marker}'\n{password}\n{marker}\n)\n"
        f'printf "%s" "$pw" | docker login --username {shlex.quote(name)} '
        f"--password-stdin {authority} 2>&1 >/dev/null\n"
    )


def render_logout(registry: Registry) -> str:
    return (
        CONFIG_ENV
        + f"docker logout {shlex.quote(registry.authority)} >/dev/null 2>&1\n"
    )


def login_problem(text: str, registry: Registry) -> str:
    """What a failed docker login says, as the reason and the fix."""
    lowered = text.lower()
    if "unauthorized" in lowered or "incorrect username or password" in lowered:
        return (
            "the registry refused the name or password; check them, or set the "
            "password again with add-user"
        )
    if "cannot connect to the docker daemon" in lowered:
        return (
            "docker's daemon does not answer here; start it (systemctl start docker) "
            "and run again, or leave this client out"
        )
    if "x509" in lowered or "certificate" in lowered:
        return (
            f"this client does not trust {registry.authority} yet: run trust-clients "
            "first"
        )
    return f"docker login failed: {text}"


def check_credentials(
    registry: Registry, ca_pem: bytes, name: str, password: str
) -> str | None:
    """Try the login against the registry from here, before any client.

    A registry that asks no login, or refuses the password, stops the task: a
    client that holds the same stale login would otherwise report "logged in
    already". Returns a note when the registry cannot be reached from here; each
    client's docker login then checks the password on its own.
    """
    authority = registry.authority
    plain = check_tls(registry.address, registry.port, ca_pem)
    if not plain.reachable:
        return (
            f"note: cannot reach {authority} from here ({plain.problem}); only "
            "clients that log in now check the password"
        )
    if not plain.ok:
        raise HostError(authority, f"{plain.problem}; see fab status")
    if plain.status == 200:
        raise HostError(
            authority,
            "the registry asks no login; add the user first: fab add-user --name "
            f"{name}",
        )
    tried = check_tls(
        registry.address,
        registry.port,
        ca_pem,
        authorization=f"Basic {expected_auth(name, password)}",
    )
    if tried.status == 401:
        raise HostError(
            authority,
            f"the registry refused {name}'s password; check it, or set it again with "
            f"fab add-user --name {name}",
        )
    if not tried.ok:
        raise HostError(authority, f"{tried.problem}; see fab status")
    return None


def plan_login(
    state: LoginState, wanted: str | None, logout: bool
) -> tuple[str, str] | None:
    """What to do on a client: (status, detail), or None to log in or out."""
    if not state.docker:
        return UNCHANGED, "no docker here: nothing to log in to"
    if logout:
        if state.auth is None and state.helper is None:
            return UNCHANGED, "not logged in"
        return None
    if state.helper is None and state.auth == wanted:
        return UNCHANGED, "logged in already"
    return None


def on_client(
    run: FleetRun,
    client: Client,
    name: str,
    password: str | None,
    dry_run: bool,
) -> Outcome:
    """Log one client's docker in (or out, without ``password``)."""
    return with_client(
        run,
        client,
        lambda connection, host: _on_client(
            run, connection, host, name, password, dry_run
        ),
    )


def _on_client(
    run: FleetRun,
    connection: Connection,
    host: str,
    name: str,
    password: str | None,
    dry_run: bool,
) -> Outcome:
    read = run_as_root(connection, render_read_login(), what="docker config")
    if not read.ok:
        raise HostError(host, f"cannot read {DOCKER_CONFIG}: {failure_line(read)}")
    state = parse_login_state(read.stdout, run.registry, host)
    logout = password is None
    wanted = None if logout else expected_auth(name, password or "")
    planned = plan_login(state, wanted, logout)
    if planned is not None:
        status, detail = planned
        return Outcome(host, status, [detail])
    verb = "logged out of" if logout else f"logged in as {name} to"
    if dry_run:
        return Outcome(
            host, WOULD_CHANGE, [f"would be {verb} {run.registry.authority}"]
        )
    script = (
        render_logout(run.registry)
        if logout
        else render_login(run.registry, name, password or "")
    )
    done = run_as_root(connection, script, what="docker login")
    if not done.ok:
        said = done.stdout.strip().splitlines()
        reason = said[-1] if said else failure_line(done)
        raise HostError(host, login_problem(reason, run.registry))
    details = [f"{verb} {run.registry.authority}"]
    if state.helper is not None:
        details.append(f"docker keeps it in its credential helper ({state.helper})")
    return Outcome(host, CHANGED, details)


LOGIN_HELP = {
    "name": "The registry user to log in as, made with add-user (not with --logout).",
    "password_file": "Read the password from the first line of this file instead of "
    "a prompt.",
    "logout": "Log the clients out of the registry instead.",
    "inventory": HELP_INVENTORY,
    "registry": "Registry as ADDRESS[:PORT] (port default 5000); default: the "
    "inventory's registry.",
    "pki_dir": HELP_PKI_DIR,
    "dry_run": "Show per host what would change, and change nothing.",
    "workers": "How many hosts to work on at once; default: 32.",
}


@task(help=LOGIN_HELP, auto_shortflags=False)
@user_errors
def login_clients(
    c: Context,
    name: str | None = None,
    password_file: str | None = None,
    logout: bool = False,
    inventory: str | None = None,
    registry: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
    dry_run: bool = False,
    workers: int | None = None,
) -> None:
    """Log every client's docker in to the registry as a user made with add-user.

    Clients come from the inventory's 'clients', or from -H (then --registry or the
    inventory names the registry). On each client with docker, runs docker login
    ADDRESS:PORT as root, with the password on its standard input; docker keeps it
    in /root/.docker/config.json (base64, not encrypted) or its credential helper. A
    client already logged in as that user with that password is left alone. The
    password comes from a prompt or --password-file, never from the command line, and
    is never logged. --logout undoes it. podman, containerd and k3s keep their own
    logins and are not touched. Safe to re-run.
    """
    if name is None and not logout:
        raise InputError("--name: give the user to log in as, for example --name ci")
    if name is not None:
        check_user_name(name)
    password = (
        None if logout else read_password(password_file, name or "", confirm=False)
    )
    run = prepare_fleet_run(
        c,
        "login-clients",
        inventory,
        registry,
        None,
        pki_dir,
        workers,
        installs=False,
    )
    if run is None:
        return
    if password is not None:
        note = check_credentials(run.registry, run.ca_pem, name or "", password)
        if note:
            log.info("%s", note)
    log.info(
        "%s %s on %s%s",
        "logging out of" if logout else f"logging in as {name} to",
        run.registry.authority,
        hosts_text(len(run.clients), "client"),
        " (dry run: nothing is changed)" if dry_run else "",
    )

    def work(client: Client) -> Outcome:
        return on_client(run, client, name or "", password, dry_run)

    outcomes = fan_out(
        list(run.clients),
        work,
        run.fleet.workers,
        on_done=lambda done, total, outcome: log_outcome(outcome, done, total),
    )
    finish(
        outcomes,
        None if logout or dry_run else f"docker push {run.registry.authority}/IMAGE",
    )
