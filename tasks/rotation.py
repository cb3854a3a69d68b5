"""Replacing the CA itself, in three checked steps, without a client losing trust.

1. begin: a next CA is made beside the current one; trust-clients then installs both.
2. switch: once every client trusts both, the registry gets a certificate of the next
   CA. Clients that trust both keep pulling through the switch.
3. finish: the old CA is retired; trust-clients then leaves only the new one.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from fabric import Connection, task
from invoke.context import Context

from . import pki
from .clients import FleetRun, prepare_fleet_run, with_client
from .errors import HostError, InputError, StateError
from .inventory import Client
from .options import DEFAULT_PKI_DIR, HELP_INVENTORY, HELP_PKI_DIR, is_connection
from .pki import StateFolder
from .registry import certify_and_deploy, check_tls, open_registry, warn_expiry
from .remote import failure_line, fan_out, positive_int, run_as_root
from .report import (
    CHANGED,
    FAILED,
    OK,
    UNCHANGED,
    Outcome,
    finish,
    log_outcome,
    user_errors,
)
from .runtimes import RUNTIMES, ca_file

STEPS = ("begin", "switch", "finish")


def render_trust_check(authority: str, marker: str) -> str:
    """Print, for every CA file a runtime reads, whether it holds the next CA."""
    paths = sorted(
        {ca_file(runtime, authority, family) for runtime in RUNTIMES
         for family in ("debian", "redhat")}
    )  # fmt: skip
    grep = f"grep -qF {shlex.quote(marker)}"
    found = f'{{ {grep} "$p" && echo "has $p" || echo "lacks $p"; }}'
    lines = [f'p={shlex.quote(path)}; [ -f "$p" ] && {found}' for path in paths]
    return "\n".join(lines) + "\ntrue\n"


def pem_marker(cert_pem: bytes) -> str:
    """A line of the certificate's base64 that no other certificate shares."""
    lines = cert_pem.decode("ascii").splitlines()
    return lines[len(lines) // 2]


def trusts_next(run: FleetRun, client: Client, marker: str) -> Outcome:
    """Whether every CA file on the client holds the next CA as well."""
    return with_client(
        run,
        client,
        lambda connection, host: _trusts_next(connection, host, run, marker),
    )


def _trusts_next(
    connection: Connection, host: str, run: FleetRun, marker: str
) -> Outcome:
    result = run_as_root(
        connection,
        render_trust_check(run.registry.authority, marker),
        what="trust check",
    )
    if not result.ok:
        raise HostError(host, failure_line(result))
    found = result.stdout.split()
    lacking = [found[i + 1] for i, word in enumerate(found) if word == "lacks"]
    having = [found[i + 1] for i, word in enumerate(found) if word == "has"]
    if lacking or not having:
        what = ", ".join(lacking) if lacking else "no CA file at all"
        return Outcome(
            host,
            FAILED,
            [f"does not trust the next CA yet ({what}); run trust-clients"],
        )
    return Outcome(host, OK, [f"trusts both CAs in {len(having)} files"])


ROTATE_CA_HELP = {
    "step": "begin, switch or finish: run them in this order, each once it is done.",
    "inventory": HELP_INVENTORY,
    "pki_dir": HELP_PKI_DIR,
    "ca_days": "Validity of the next CA in days (begin); default: "
    f"{pki.DEFAULT_CA_DAYS}.",
    "workers": "How many clients to check at once (switch); default: 32.",
}


@task(help=ROTATE_CA_HELP, auto_shortflags=False)
@user_errors
def rotate_ca(
    c: Context,
    step: str | None = None,
    inventory: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
    ca_days: str | None = None,
    workers: int | None = None,
) -> None:
    """Replace the CA in three steps; every client trusts the registry throughout.

    --step begin: make the next CA (pki/next/); then run trust-clients, which installs
    the current and the next CA together.
    --step switch: check that every client in the inventory trusts the next CA, then
    give the registry a certificate of the next CA and check it serves it.
    --step finish: retire the old CA to pki/retired/ and make the next one current;
    then run trust-clients, which leaves only the new CA on the clients.
    Each step refuses to run out of order and says what to do first.
    """
    if step is None or step not in STEPS:
        raise InputError(f"--step {step}: use begin, switch or finish, in that order")
    if is_connection(c):
        raise InputError(
            "rotate-ca reads the registry and its clients from the inventory; drop -H"
        )
    state = StateFolder(Path(pki_dir))
    with state.locked():
        if step == "begin":
            days = ca_days or pki.DEFAULT_CA_DAYS
            _begin(c, state, inventory, positive_int(days, "--ca-days", pki.MAX_DAYS))
        elif step == "switch":
            _switch(c, state, inventory, workers)
        else:
            _finish(c, state, inventory)


def _begin(c: Context, state: StateFolder, inventory: str | None, days: int) -> None:
    if state.switched:
        raise StateError(
            f"{state.next_dir}: the registry already uses the next CA; run "
            "rotate-ca --step finish"
        )
    spec, _ = open_registry(c, inventory, str(state.path))
    made = state.begin_rotation(spec.addresses, days=days)
    said = "made the next CA" if made.change else "the next CA exists already"
    outcome = Outcome(
        str(state.path),  # this step changes only the state folder
        CHANGED if made.change else UNCHANGED,
        [f"{said}: {state.next_cert_path} (SHA-256 {pki.fingerprint(made.cert)})"],
    )
    log_outcome(outcome)
    warn_expiry(made.cert, "CA", state.next_cert_path)
    finish(
        [outcome], "fab trust-clients (installs both CAs), then rotate-ca --step switch"
    )


def _nothing_begun(state: StateFolder) -> StateError:
    return StateError(
        f"{state.next_dir}: no CA rotation in progress (pki/ca.crt is the CA in use); "
        "start one with rotate-ca --step begin"
    )


def _switch(
    c: Context, state: StateFolder, inventory: str | None, workers: int | None
) -> None:
    found = state.read_next_ca()
    if found is None:
        raise _nothing_begun(state)
    run = prepare_fleet_run(
        c, "rotate-ca", inventory, None, None, str(state.path), workers
    )
    assert run is not None
    marker = pem_marker(pki.cert_pem(found[0]))
    checks = fan_out(
        list(run.clients),
        lambda client: trusts_next(run, client, marker),
        run.fleet.workers,
    )
    for done, outcome in enumerate(checks, start=1):
        log_outcome(outcome, done, len(checks))
    if any(outcome.failed for outcome in checks):
        finish(  # exits 1, naming the hosts
            checks,
            fix="run fab trust-clients (it installs both CAs), then rotate-ca --step "
            "switch again",
        )
    spec, connection = open_registry(c, inventory, str(state.path))
    first_time = not state.switched
    state.mark_switched()
    # Once switched, the next CA signs: a re-run reuses its certificate.
    outcome = certify_and_deploy(
        spec,
        connection,
        state,
        new_server_cert=first_time,
        notes=["the registry now uses the next CA"] if first_time else [],
    )
    finish([outcome], "rotate-ca --step finish, then fab trust-clients")


def _finish(c: Context, state: StateFolder, inventory: str | None) -> None:
    found = state.read_next_ca()
    if found is None and any(state.retired_dir.glob("ca-*")):
        # Finished before: a second run has nothing to do.
        outcome = Outcome(
            str(state.path),
            UNCHANGED,
            [f"no rotation in progress; {state.ca_cert_path} is the CA in use"],
        )
        log_outcome(outcome)
        finish([outcome], "fab trust-clients (leaves only this CA on every client)")
        return
    if found is None:
        raise _nothing_begun(state)
    if not state.switched:
        raise StateError(
            f"{state.next_dir}: the registry does not use the next CA yet; run "
            "rotate-ca --step switch first"
        )
    spec, _ = open_registry(c, inventory, str(state.path))
    check = check_tls(spec.address, spec.port, pki.cert_pem(found[0]))
    if not check.ok:
        raise StateError(
            f"https://{spec.authority}/v2/ does not pass with the next CA alone "
            f"({check.problem}); run rotate-ca --step switch again"
        )
    retired = state.finish_rotation()
    outcome = Outcome(
        str(state.path),
        CHANGED,
        [f"the next CA is now {state.ca_cert_path}", f"the old CA is in {retired}"],
    )
    log_outcome(outcome)
    finish([outcome], "fab trust-clients (leaves only the new CA on every client)")
