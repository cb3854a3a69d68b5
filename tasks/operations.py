"""Day-two tasks on the registry host: status, expiry, rotation, logs, teardown.

Plain functions render the remote scripts and read what they print; the tasks at the
bottom resolve the registry (from -H or the inventory), connect and report.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import socket
import ssl
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from fabric import Connection, task
from invoke.context import Context
from invoke.exceptions import Exit

from . import pki
from .errors import HostError, StateError
from .options import DEFAULT_PKI_DIR, HELP_INVENTORY, HELP_PKI_DIR
from .pki import StateFolder
from .registry import (
    MANAGED_LABEL,
    RegistrySpec,
    certify_and_deploy,
    check_tls,
    inspect_container,
    live_spec,
    open_registry,
    wait_for_tls,
    warn_expiry_of,
)
from .remote import failure_line, host_label, positive_int, run_as_root
from .report import (
    CHANGED,
    UNCHANGED,
    Outcome,
    finish,
    log,
    log_outcome,
    send_log_to_stderr,
    size_text,
    user_errors,
)

HELP_REGISTRY_HOST = (
    "The registry host comes from -H, else registry.ssh or registry.address in the "
    "inventory."
)


# status --------------------------------------------------------------------------


def render_status(spec: RegistrySpec) -> str:
    """One script that reads the container, the registry's version and its data."""
    name = shlex.quote(spec.container)
    if spec.data.startswith("/"):
        where = f"m={shlex.quote(spec.data)}"
    else:
        where = (
            "m=$(docker volume inspect --format '{{.Mountpoint}}' "
            f"{shlex.quote(spec.data)} 2>/dev/null)"
        )
    return f"""
echo "@@container"
docker container inspect {name} 2>/dev/null
echo "@@version"
docker exec {name} registry --version 2>/dev/null
echo "@@data"
{where}
if [ -n "$m" ] && [ -d "$m" ]; then
  echo "$m"
  du -sb "$m" | cut -f1
  find "$m/docker/registry/v2/repositories" -type d -name _manifests 2>/dev/null \\
    | wc -l
fi
echo "@@cert"
cat {shlex.quote(spec.cert_path)} 2>/dev/null
echo "@@end"
"""


@dataclass
class Status:
    """What ``status`` reports about the registry host."""

    host: str
    address: str
    container: str
    state: str = "missing"
    managed: bool = False
    image: str | None = None
    version: str | None = None
    started: str | None = None
    uptime: str | None = None
    data: str | None = None
    data_bytes: int | None = None
    repositories: int | None = None
    tls: str | None = None
    certificate_addresses: list[str] = field(default_factory=list)
    certificate_days_left: int | None = None
    certificate_fingerprint: str | None = None
    ca_fingerprint: str | None = None
    next_ca_fingerprint: str | None = None  # during a CA rotation
    warnings: list[str] = field(default_factory=list)


def sections(output: str) -> dict[str, list[str]]:
    """Split script output into its ``@@name`` sections."""
    found: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith("@@"):
            current = line[2:].strip()
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return found


def read_status(status: Status, output: str, now: dt.datetime | None = None) -> Status:
    """Fill ``status`` from what ``render_status`` printed."""
    now = now or dt.datetime.now(dt.UTC)
    parts = sections(output)
    inspect = "\n".join(parts.get("container", [])).strip()
    containers = json.loads(inspect) if inspect else []
    if containers:
        container = containers[0]
        state = container.get("State") or {}
        config = container.get("Config") or {}
        status.state = state.get("Status", "unknown")
        status.managed = (config.get("Labels") or {}).get(MANAGED_LABEL) == "true"
        status.image = config.get("Image")
        started = state.get("StartedAt")
        if started and status.state == "running":
            status.started = started
            status.uptime = _uptime(started, now)
    version = [line for line in parts.get("version", []) if line.strip()]
    if version:
        status.version = version[-1].split()[-1]
    data = [line.strip() for line in parts.get("data", []) if line.strip()]
    if len(data) == 3:
        status.data = data[0]
        status.data_bytes = int(data[1])
        status.repositories = int(data[2])
    cert_text = "\n".join(parts.get("cert", [])).strip()
    if cert_text and status.certificate_fingerprint is None:
        try:
            cert = x509.load_pem_x509_certificate(cert_text.encode())
        except ValueError:
            status.warnings.append("the certificate file on the host is not readable")
        else:
            describe_certificate(status, cert, now)
    return status


def describe_certificate(
    status: Status, cert: x509.Certificate, now: dt.datetime
) -> None:
    status.certificate_addresses = pki.cert_addresses(cert)
    status.certificate_days_left = pki.days_left(cert, now)
    status.certificate_fingerprint = pki.fingerprint(cert)
    if status.certificate_days_left < pki.RENEW_DAYS:
        status.warnings.append(
            f"the server certificate expires in {status.certificate_days_left} days: "
            "run rotate-cert"
        )


def _uptime(started: str, now: dt.datetime) -> str:
    # Docker prints nanoseconds; Python reads at most microseconds.
    stamp = started.rstrip("Z").split(".")[0]
    try:
        begun = dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.UTC)
    except ValueError:
        return "unknown"
    seconds = int((now - begun).total_seconds())
    days, rest = divmod(max(seconds, 0), 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h {rest // 60}m"


def format_status(status: Status) -> str:
    """The status as aligned ``key: value`` lines for people."""
    size = (
        f"{size_text(status.data_bytes)} in {status.data}"
        if status.data_bytes is not None
        else "unknown"
    )
    certificate = (
        f"{', '.join(status.certificate_addresses)}; {status.certificate_days_left} "
        "days left"
        if status.certificate_fingerprint
        else "unknown"
    )
    rows = [
        ("host", status.host),
        ("registry", status.address),
        ("container", f"{status.container} ({status.state}"
         f"{'' if status.managed or status.state == 'missing' else ', not ours'})"),
        ("image", f"{status.image or '-'} (registry {status.version or '?'})"),
        ("uptime", status.uptime or "-"),
        ("TLS", status.tls or "-"),
        ("certificate", certificate),
        ("cert SHA-256", status.certificate_fingerprint or "-"),
        ("CA SHA-256", status.ca_fingerprint or "- (no pki/ca.crt here)"),
        *(
            [("next CA", status.next_ca_fingerprint)]
            if status.next_ca_fingerprint
            else []
        ),
        ("repositories", "-" if status.repositories is None
         else str(status.repositories)),
        ("data", size),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"warning: {warning}" for warning in status.warnings]
    return "\n".join(lines)


STATUS_HELP = {
    "inventory": HELP_INVENTORY,
    "pki_dir": HELP_PKI_DIR,
    "json": "Print the status as JSON, for scripts.",
}


@task(help=STATUS_HELP, auto_shortflags=False)
@user_errors
def status(
    c: Context,
    inventory: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
    json: bool = False,
) -> None:
    """Show the registry's container, version, certificate, TLS check and data.

    Reads the registry host over SSH (nothing changes) and checks
    https://ADDRESS:PORT/v2/ from here with the CA in the state folder. The TLS line
    says what fails when the check does not pass. The certificate shown is the one
    installed on the host. Exits 1 when the registry is not running or fails the TLS
    check. Use --json for scripts.
    """
    if json:
        send_log_to_stderr()
    spec, connection = open_registry(c, inventory, pki_dir)
    spec = live_spec(connection, spec)
    state = StateFolder(Path(pki_dir))
    found = Status(host_label(connection), spec.authority, spec.container)
    ca_cert = _optional_ca(state)
    if ca_cert is not None:
        found.ca_fingerprint = pki.fingerprint(ca_cert)
        check = check_tls(spec.address, spec.port, state.trust_bundle())
        found.tls = (
            f"ok (HTTP {check.status} on /v2/)"
            if check.ok
            else f"failing: {check.problem}"
        )
        if pki.days_left(ca_cert) < pki.RENEW_DAYS:
            found.warnings.append(f"the CA expires in {pki.days_left(ca_cert)} days")
        upcoming = state.read_next_ca()
        if upcoming is not None:
            found.next_ca_fingerprint = pki.fingerprint(upcoming[0])
            found.warnings.append(
                "a CA rotation is in progress: the next CA signs the registry's "
                "certificate now; run rotate-ca --step finish"
                if state.switched
                else "a CA rotation is in progress: run fab trust-clients, then "
                "rotate-ca --step switch"
            )
    result = run_as_root(connection, render_status(spec), what="status")
    read_status(found, result.stdout)
    if json:
        print(_json_dump(asdict(found)))
    else:
        print(format_status(found))
    trouble = serving_problem(found)
    if trouble:
        raise Exit(f"error: {found.host}: {trouble}", code=1)


def serving_problem(found: Status) -> str | None:
    """Why the registry does not serve, for status's exit code; None when it does."""
    if found.state == "missing":
        return "no registry container; run setup-registry"
    if found.state != "running":
        return f"the registry container is {found.state}; run restart or setup-registry"
    if found.tls is not None and not found.tls.startswith("ok"):
        return f"the TLS check is {found.tls}; see fab logs, then run setup-registry"
    return None


def _json_dump(value: Any) -> str:
    return json.dumps(value, indent=2)


def _optional_ca(state: StateFolder) -> x509.Certificate | None:
    """The CA when the folder has one; a damaged one is an error, not "none"."""
    if not state.ca_cert_path.exists():
        return None
    return state.read_ca_cert()


# check-expiry -------------------------------------------------------------------


@dataclass
class Expiry:
    what: str
    days_left: int | None
    until: str | None = None
    problem: str | None = None


def expiry_lines(found: list[Expiry], threshold: int) -> tuple[list[str], bool]:
    """Lines for people, and whether anything is below the threshold."""
    lines = []
    failing = False
    for item in found:
        if item.days_left is None:
            lines.append(f"{item.what}: not checked ({item.problem})")
            continue
        low = item.days_left < threshold
        failing |= low
        word = "EXPIRES SOON" if low else "ok"
        lines.append(
            f"{item.what}: {word}, {item.days_left} days left (until {item.until})"
        )
    return lines, failing


EXPIRY_HELP = {
    "inventory": HELP_INVENTORY,
    "pki_dir": HELP_PKI_DIR,
    "days": "Exit 1 when anything expires in fewer days than this; default: 30.",
    "quiet": "Print nothing unless something expires within --days (cron mails "
    "whatever a job prints); default: off.",
}


@task(help=EXPIRY_HELP, auto_shortflags=False)
@user_errors
def check_expiry(
    c: Context,
    inventory: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
    days: str | None = None,
    quiet: bool = False,
) -> None:
    """Report when the CA and the server certificate expire; exit 1 below --days.

    Reads pki/ca.crt and pki/server.crt here, and the certificate the registry
    actually serves (a TLS handshake to ADDRESS:PORT, no SSH). Meant for cron, with
    --quiet: nothing printed and exit 0 while all is well; otherwise the dates and
    exit 1, saying what to renew (rotate-cert, or rotate-ca). A registry that cannot
    be reached from here is an error too: its certificate could not be checked.
    """
    threshold = pki.RENEW_DAYS if days is None else positive_int(days, "--days", 36500)
    state = StateFolder(Path(pki_dir))
    ca_cert = state.read_ca_cert()
    found = [_expiry("CA (pki/ca.crt)", ca_cert)]
    upcoming = state.read_next_ca()
    if upcoming is not None:
        found.append(_expiry("next CA (pki/next/ca.crt)", upcoming[0]))
    if state.server_cert_path.exists():
        server = x509.load_pem_x509_certificate(state.server_cert_path.read_bytes())
        found.append(_expiry("server certificate (pki/server.crt)", server))
    spec, _ = open_registry(c, inventory, pki_dir)
    served = _served_certificate(spec, state.trust_bundle())
    if isinstance(served, x509.Certificate):
        found.append(_expiry(f"served by {spec.authority}", served))
    else:
        found.append(Expiry(f"served by {spec.authority}", None, problem=served))
    lines, failing = expiry_lines(found, threshold)
    unchecked = [item.what for item in found if item.days_left is None]
    for line in lines if failing or unchecked or not quiet else []:
        log.info("%s", line)
    if failing:
        raise Exit(
            f"error: a certificate expires within {threshold} days; run rotate-cert "
            "(server certificate) or rotate-ca (CA)",
            code=1,
        )
    if unchecked:
        raise Exit(
            f"error: could not check the certificate {unchecked[0]}; is the registry "
            "up (fab status)? Run check-expiry where its address is reachable",
            code=1,
        )


def _expiry(what: str, cert: x509.Certificate) -> Expiry:
    return Expiry(what, pki.days_left(cert), f"{cert.not_valid_after_utc:%Y-%m-%d}")


def _served_certificate(spec: RegistrySpec, ca_pem: bytes) -> x509.Certificate | str:
    """The certificate the registry presents, verified against our CAs only."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.check_hostname = False
    try:
        with (
            socket.create_connection((spec.address, spec.port), timeout=5) as sock,
            context.wrap_socket(sock) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot connect: {exc}"
    return x509.load_der_x509_certificate(der) if der else "no certificate"


# rotate-cert --------------------------------------------------------------------


ROTATE_HELP = {
    "inventory": HELP_INVENTORY,
    "pki_dir": HELP_PKI_DIR,
    "server_days": f"Validity of the new certificate in days; default: "
    f"{pki.DEFAULT_SERVER_DAYS}.",
}


@task(help=ROTATE_HELP, auto_shortflags=False)
@user_errors
def rotate_cert(
    c: Context,
    inventory: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
    server_days: str | None = None,
) -> None:
    """Issue a new server certificate from the same CA and make the registry serve it.

    Clients need nothing: they trust the CA, not the certificate. The registry
    container is recreated (its data is kept) and the new certificate is checked over
    TLS. To change the addresses, edit the inventory (or use setup-registry's options);
    setup-registry reissues the certificate when they change.
    """
    lifetime = (
        None
        if server_days is None
        else positive_int(server_days, "--server-days", pki.MAX_DAYS)
    )
    spec, connection = open_registry(c, inventory, pki_dir)
    state = StateFolder(Path(pki_dir))
    if not state.ca_cert_path.exists():
        raise StateError(
            f"{state.ca_cert_path}: no CA here; rotate-cert renews a registry made by "
            "setup-registry: run it from that folder, or pass --pki-dir"
        )
    outcome = certify_and_deploy(
        spec,
        connection,
        state,
        server_days=lifetime,
        new_server_cert=True,
        existing_only=True,
    )
    finish([outcome], "clients need nothing: they keep pulling")


# logs, restart, teardown --------------------------------------------------------


def _managed_container(
    connection: Connection, spec: RegistrySpec
) -> dict[str, Any] | None:
    """The registry container if it exists; refuse one that is not ours."""
    found = inspect_container(connection, spec)
    host = host_label(connection)
    if found is None:
        return None
    container: dict[str, Any] = json.loads(found)[0]
    labels = (container.get("Config") or {}).get("Labels") or {}
    if labels.get(MANAGED_LABEL) != "true":
        raise HostError(
            host,
            f"container {spec.container!r} was not made by this tool; leave it, or "
            "set registry.container in the inventory to the name of ours",
        )
    return container


LOGS_HELP = {
    "inventory": HELP_INVENTORY,
    "lines": "How many of the last lines to show; default: 100.",
    "follow": "Keep printing new lines until interrupted.",
}


@task(help=LOGS_HELP, auto_shortflags=False)
@user_errors
def logs(
    c: Context, inventory: str | None = None, lines: str = "100", follow: bool = False
) -> None:
    """Show the registry container's log."""
    spec, connection = open_registry(c, inventory)
    if _managed_container(connection, spec) is None:
        raise HostError(
            host_label(connection), "no registry container; run setup-registry"
        )
    count = positive_int(lines, "--lines", 1_000_000)
    warn_expiry_of(StateFolder(Path(DEFAULT_PKI_DIR)))
    command = f"docker logs --tail {count} {'--follow ' if follow else ''}"
    prefix = "" if connection.user == "root" else "sudo "
    # The registry logs to its standard error: both come out on ours, for grep.
    connection.run(
        prefix + command + shlex.quote(spec.container) + " 2>&1",
        pty=follow,
        warn=True,
    )


@task(
    help={"inventory": HELP_INVENTORY, "pki_dir": HELP_PKI_DIR}, auto_shortflags=False
)
@user_errors
def restart(
    c: Context, inventory: str | None = None, pki_dir: str = DEFAULT_PKI_DIR
) -> None:
    """Restart the registry container, then check it serves TLS again."""
    spec, connection = open_registry(c, inventory, pki_dir)
    host = host_label(connection)
    if _managed_container(connection, spec) is None:
        raise HostError(host, "no registry container; run setup-registry")
    result = run_as_root(
        connection,
        f"docker restart {shlex.quote(spec.container)} >/dev/null\n",
        what="restart",
    )
    if not result.ok:
        raise HostError(host, f"docker restart failed: {failure_line(result)}")
    details = ["restarted the container"]
    state = StateFolder(Path(pki_dir))
    ca_cert = _optional_ca(state)
    if ca_cert is not None:
        fingerprint = None
        if state.server_cert_path.exists():
            server = x509.load_pem_x509_certificate(state.server_cert_path.read_bytes())
            fingerprint = pki.fingerprint(server)
        check = wait_for_tls(
            spec.address, spec.port, state.trust_bundle(), fingerprint, 30
        )
        if not check.ok:
            raise HostError(
                host, f"after the restart, the TLS check failed: {check.problem}"
            )
        details.append(f"https://{spec.authority}/v2/ serves TLS again")
    outcome = Outcome(host, CHANGED, details)
    log_outcome(outcome)
    warn_expiry_of(state)
    finish([outcome])


TEARDOWN_HELP = {
    "inventory": HELP_INVENTORY,
    "purge_data": "Also delete the registry's data (every image), its TLS files and "
    "its users file on the host; a later setup-registry starts an empty registry "
    "without login. Without it they are kept.",
}


@task(help=TEARDOWN_HELP, auto_shortflags=False)
@user_errors
def teardown(
    c: Context, inventory: str | None = None, purge_data: bool = False
) -> None:
    """Remove the registry container; keep its data, TLS files and the local pki/.

    With --purge-data, the data (volume or folder) and REMOTE_DIR (the TLS files and
    the users file) go too. The CA in pki/ is never deleted: clients still trust it,
    and untrust-clients needs it.
    """
    spec, connection = open_registry(c, inventory)
    spec = live_spec(connection, spec)
    host = host_label(connection)
    container = _managed_container(connection, spec)
    lines = []
    if container is not None:
        lines.append(
            f"docker rm --force {shlex.quote(spec.container)} >/dev/null || exit 1"
        )
        lines.append("echo 'removed container'")
    if purge_data:
        data = shlex.quote(spec.data)
        said = shlex.quote(f"removed the data ({spec.data}): every image")
        # A folder that is a mount point stays, emptied: that counts as removed.
        lines.append(
            'purge() { [ -d "$1" ] || return 0; rm -rf "$1" 2>/dev/null; '
            'if [ -n "$(ls -A "$1" 2>/dev/null)" ]; then '
            'echo "could not remove $1: $(rm -rf "$1" 2>&1 | tail -n 1)" >&2; exit 1; '
            'fi; echo "$2"; }'
        )
        if spec.data.startswith("/"):
            lines.append(f"purge {data} {said}")
        else:
            lines.append(f"docker volume rm {data} >/dev/null 2>&1 && echo {said}")
        lines.append(
            f"purge {shlex.quote(spec.remote_dir)} "
            f"{shlex.quote(f'removed {spec.remote_dir} (TLS files and users)')}"
        )
    lines.append("true")
    result = run_as_root(connection, "\n".join(lines) + "\n", what="teardown")
    if not result.ok:
        raise HostError(host, f"teardown failed: {failure_line(result)}")
    done = [line for line in result.stdout.splitlines() if line.startswith("removed")]
    if not purge_data:
        done.append(
            f"kept the data ({spec.data}), the TLS files and users "
            f"({spec.remote_dir}): setup-registry brings the registry back with its "
            "images"
        )
    done.append("kept pki/ (the CA clients trust): untrust-clients still needs it")
    status_word = (
        CHANGED if any(line.startswith("removed") for line in done) else UNCHANGED
    )
    outcome = Outcome(host, status_word, done)
    log_outcome(outcome)
    finish([outcome])
