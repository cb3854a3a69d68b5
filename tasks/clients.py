"""Client machines: install the registry's CA where each container runtime reads it.

Each client costs one SSH connection and one remote command, whether anything changes or
not: the script detects the runtimes, compares every file with what it should be and
writes only the ones that differ, atomically.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fabric import task
from invoke.context import Context

from . import pki
from .addresses import (
    DEFAULT_REGISTRY_PORT,
    parse_ip,
    registry_authority,
    split_authority,
)
from .errors import HostError, InputError
from .inventory import AUTO, RUNTIMES, Client, RegistrySettings
from .options import (
    DEFAULT_PKI_DIR,
    HELP_INVENTORY,
    HELP_PKI_DIR,
    command_line_hosts,
    is_connection,
    read_inventory,
    split_list,
    targets_from_hosts,
)
from .pki import StateFolder
from .remote import (
    DEFAULT_WORKERS,
    FileReport,
    Fleet,
    RemoteFile,
    failure_line,
    fan_out,
    render_put_files,
    render_remove_files,
    run_as_root,
    script_header,
)
from .report import (
    CHANGED,
    FAILED,
    UNCHANGED,
    WOULD_CHANGE,
    Outcome,
    finish,
    log,
    log_outcome,
    user_errors,
)

#: Where each runtime looks for a registry's CA, per ``ADDRESS:PORT`` folder.
CERTS_DIRS = {
    "docker": "/etc/docker/certs.d",
    "podman": "/etc/containers/certs.d",
}

#: How ``auto`` recognises a runtime on a host: its programs or its config folder.
DETECT = {
    "docker": "command -v dockerd || command -v docker || [ -d /etc/docker ]",
    "podman": (
        "command -v podman || command -v skopeo || command -v crio "
        "|| command -v buildah || [ -d /etc/containers ]"
    ),
}


@dataclass(frozen=True)
class Registry:
    """The registry as clients reach it."""

    address: str
    port: int

    @property
    def authority(self) -> str:
        return registry_authority(self.address, self.port)


def trust_files(registry: Registry, ca_pem: bytes, runtime: str) -> list[RemoteFile]:
    """The files that make ``runtime`` trust the registry's CA."""
    folder = f"{CERTS_DIRS[runtime]}/{registry.authority}"
    return [RemoteFile(f"{folder}/ca.crt", ca_pem, 0o644)]


def stray_folder_patterns(registry: Registry, runtime: str) -> list[str]:
    """Shell globs for folders of the same address without our exact port.

    A CA in ``certs.d/ADDRESS/`` or ``certs.d/ADDRESS:443/`` is not read for images
    named ``ADDRESS:5000/...``: a classic cause of "certificate signed by unknown
    authority".
    """
    base = CERTS_DIRS[runtime]
    ip = parse_ip(registry.address)
    host = (
        f"[{registry.address}]"
        if ip is not None and ip.version == 6
        else registry.address
    )
    bare = shlex.quote(f"{base}/{host}")
    return [bare, f"{bare}:*", shlex.quote(f"{base}/{registry.address}")]


def render_trust(
    registry: Registry, ca_pem: bytes, runtimes: Sequence[str], dry_run: bool
) -> str:
    """The one script that installs the CA for the client's runtimes."""
    auto = AUTO in runtimes
    lines = [script_header(dry_run), "found=''"]
    for runtime in RUNTIMES if auto else runtimes:
        files = trust_files(registry, ca_pem, runtime)
        ours = shlex.quote(f"{CERTS_DIRS[runtime]}/{registry.authority}")
        condition = f"{{ {DETECT[runtime]}; }} >/dev/null 2>&1" if auto else "true"
        lines.append(f"if {condition}; then")
        lines.append(f"echo 'runtime {runtime}'; found=1")
        lines.append(render_put_files(files))
        lines.append(
            f"for d in {' '.join(stray_folder_patterns(registry, runtime))}; do "
            f'[ -d "$d" ] && [ "$d" != {ours} ] && echo "stray $d"; done'
        )
        lines.append("fi")
    lines.append("[ -n \"$found\" ] || echo 'runtime none'")
    return "\n".join(lines) + "\n"


def render_untrust(registry: Registry, ca_pem: bytes, runtimes: Sequence[str]) -> str:
    """The inverse of ``render_trust``: remove what it wrote, if still unmodified."""
    chosen = RUNTIMES if AUTO in runtimes else runtimes
    lines = [script_header(False)]
    for runtime in chosen:
        lines.append(render_remove_files(trust_files(registry, ca_pem, runtime)))
    return "\n".join(lines)


@dataclass
class TrustReport:
    """What the trust script found and did on one client."""

    runtimes: list[str]
    files: FileReport
    stray: list[str]


def parse_trust(output: str) -> TrustReport:
    """Read the lines ``render_trust`` prints."""
    files = FileReport.parse(output)
    runtimes = []
    stray = []
    for line in files.other:
        word, _, rest = line.partition(" ")
        if word == "runtime" and rest != "none":
            runtimes.append(rest)
        elif word == "stray":
            stray.append(rest)
    return TrustReport(runtimes=runtimes, files=files, stray=stray)


def client_runtimes(client: Client, override: Sequence[str] | None) -> tuple[str, ...]:
    """The runtimes to trust on ``client``: --runtimes wins over the inventory."""
    return tuple(override) if override else client.runtimes


# The tasks ----------------------------------------------------------------------------

TRUST_HELP = {
    "inventory": HELP_INVENTORY,
    "registry": "Registry as ADDRESS[:PORT] (port default 5000); default: the "
    "inventory's registry.",
    "runtimes": "Comma-separated runtimes to trust on every client, from "
    f"{', '.join((AUTO, *RUNTIMES))}; default: per client from the inventory, "
    "else auto.",
    "pki_dir": HELP_PKI_DIR,
    "dry_run": "Show per host what would change, and change nothing.",
    "workers": f"How many hosts to work on at once; default: {DEFAULT_WORKERS}.",
}

#: Fleet tasks already run in this process (Fabric calls them once per -H host).
_ran: set[str] = set()


@dataclass(frozen=True)
class FleetRun:
    """Everything a fleet task needs, resolved before any connection opens."""

    registry: Registry
    clients: tuple[Client, ...]
    ca_pem: bytes
    fleet: Fleet


def prepare_fleet_run(
    c: Context,
    task_name: str,
    inventory: str | None,
    registry: str | None,
    runtimes: str | None,
    pki_dir: str,
    workers: int | None,
) -> FleetRun | None:
    """Load and check everything; None when an earlier -H call did the work already."""
    if task_name in _ran:
        return None
    _ran.add(task_name)
    cli_hosts = command_line_hosts() if is_connection(c) else []
    book = read_inventory(inventory, required=not (cli_hosts and registry))
    settings = book.registry if book else RegistrySettings()

    if registry is not None:
        address, port = split_authority(registry, "--registry")
        wanted = (settings.address, settings.port or DEFAULT_REGISTRY_PORT)
        if settings.address is not None and (address, port) != wanted:
            raise InputError(
                f"--registry {registry} contradicts registry "
                f"{wanted[0]}:{wanted[1]} in "
                f"{book.path if book else 'the inventory'}; change one of them"
            )
    elif settings.address is not None:
        address, port = settings.address, settings.port or DEFAULT_REGISTRY_PORT
    else:
        raise InputError(
            "no registry: pass --registry ADDRESS[:PORT] or set registry.address in "
            f"{book.path if book else 'the inventory'}"
        )

    override = split_list(runtimes, "--runtimes")
    if override is not None:
        for name in override:
            if name not in (AUTO, *RUNTIMES):
                raise InputError(
                    f"--runtimes: unknown runtime {name!r}; use "
                    f"{', '.join((AUTO, *RUNTIMES))}"
                )
    if cli_hosts:
        clients = tuple(
            Client(target=target) for target in targets_from_hosts(cli_hosts)
        )
    elif book is not None and book.clients:
        clients = book.clients
    else:
        where = book.path if book else "the inventory"
        raise InputError(f"no clients: list them under 'clients' in {where} or pass -H")
    if override is not None:
        clients = tuple(
            Client(target=client.target, runtimes=tuple(override)) for client in clients
        )

    ca_pem = pki.cert_pem(StateFolder(Path(pki_dir)).read_ca_cert())
    fleet = Fleet.from_config(c.config)
    if workers is not None:
        if int(workers) < 1:
            raise InputError(f"--workers {workers}: give at least 1")
        fleet.workers = int(workers)
    return FleetRun(Registry(address, port), clients, ca_pem, fleet)


@task(help=TRUST_HELP, auto_shortflags=False)
@user_errors
def trust_clients(
    c: Context,
    inventory: str | None = None,
    registry: str | None = None,
    runtimes: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
    dry_run: bool = False,
    workers: int | None = None,
) -> None:
    """Install the registry's CA on every client so its runtimes trust the registry.

    Clients come from the inventory's 'clients', or from -H (then --registry or the
    inventory names the registry). On each client, for each runtime found (or listed):
    docker reads /etc/docker/certs.d/ADDRESS:PORT/ca.crt, podman, CRI-O and skopeo
    read /etc/containers/certs.d/ADDRESS:PORT/ca.crt. Files are written atomically and
    only when they differ. Hosts run in parallel; a failed host does not stop the
    others, and the task exits 1 at the end if any failed. Safe to re-run.
    """
    run = prepare_fleet_run(
        c, "trust-clients", inventory, registry, runtimes, pki_dir, workers
    )
    if run is None:
        return
    mode = " (dry run: nothing is changed)" if dry_run else ""
    log.info(
        "trusting %s on %d clients%s", run.registry.authority, len(run.clients), mode
    )

    def work(client: Client) -> Outcome:
        return trust_one(run, client, dry_run)

    outcomes = fan_out(list(run.clients), work, run.fleet.workers, on_done=_progress)
    finish(
        outcomes, None if dry_run else f"push and pull {run.registry.authority}/IMAGE"
    )


def _progress(done: int, total: int, outcome: Outcome) -> None:
    log_outcome(outcome, done, total)


def trust_one(run: FleetRun, client: Client, dry_run: bool) -> Outcome:
    """Install the CA on one client; every failure becomes that host's outcome."""
    connection = run.fleet.connect(client.target)
    host = str(client.target)
    try:
        script = render_trust(run.registry, run.ca_pem, client.runtimes, dry_run)
        result = run_as_root(connection, script, what="trust")
        if not result.ok:
            raise HostError(host, f"could not install the CA: {failure_line(result)}")
        report = parse_trust(result.stdout)
    except HostError as exc:
        return Outcome(host, FAILED, [exc.reason])
    finally:
        connection.close()
    return trust_outcome(host, report, dry_run)


def trust_outcome(host: str, report: TrustReport, dry_run: bool) -> Outcome:
    """Turn what the script said into the host's line."""
    if not report.runtimes:
        return Outcome(
            host,
            FAILED,
            [
                "no container runtime found (docker, podman, skopeo, CRI-O); install "
                "one, or list runtimes for this client in the inventory"
            ],
        )
    details = [f"runtimes: {', '.join(report.runtimes)}"]
    verb = "would write" if dry_run else "wrote"
    details.extend(f"{verb} {path}" for path in report.files.changed)
    details.extend(
        f"note: {folder} also exists but is not read for this registry's images"
        for folder in report.stray
    )
    if report.files.changed:
        status = WOULD_CHANGE if dry_run else CHANGED
    else:
        status = UNCHANGED
    return Outcome(host, status, details)


UNTRUST_HELP = {key: TRUST_HELP[key] for key in ("inventory", "registry", "pki_dir")}
UNTRUST_HELP["runtimes"] = TRUST_HELP["runtimes"]
UNTRUST_HELP["workers"] = TRUST_HELP["workers"]


@task(help=UNTRUST_HELP, auto_shortflags=False)
@user_errors
def untrust_clients(
    c: Context,
    inventory: str | None = None,
    registry: str | None = None,
    runtimes: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
    workers: int | None = None,
) -> None:
    """Remove from every client exactly what trust-clients installed there.

    Deletes each CA file trust-clients wrote, only if it still holds our CA (a file
    someone changed is kept and reported), and its folder when that leaves it empty.
    Same hosts and options as trust-clients. Safe to re-run.
    """
    run = prepare_fleet_run(
        c, "untrust-clients", inventory, registry, runtimes, pki_dir, workers
    )
    if run is None:
        return

    def work(client: Client) -> Outcome:
        connection = run.fleet.connect(client.target)
        host = str(client.target)
        try:
            script = render_untrust(run.registry, run.ca_pem, client.runtimes)
            result = run_as_root(connection, script, what="untrust")
            if not result.ok:
                raise HostError(
                    host, f"could not remove the CA: {failure_line(result)}"
                )
        except HostError as exc:
            return Outcome(host, FAILED, [exc.reason])
        finally:
            connection.close()
        report = FileReport.parse(result.stdout)
        details = [f"removed {path}" for path in report.removed]
        details += [f"kept {path} (changed since we wrote it)" for path in report.kept]
        return Outcome(host, CHANGED if report.removed else UNCHANGED, details)

    finish(fan_out(list(run.clients), work, run.fleet.workers, on_done=_progress))
