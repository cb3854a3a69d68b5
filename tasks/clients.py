"""Client machines: install the registry's CA where each container runtime reads it.

A client with nothing to change costs one SSH connection and one remote command: the
script detects the runtimes, compares every file with what it should be, writes only the
ones that differ (atomically) and prints the config files that need merging. Only when a
config file (containerd, k3s, rke2, BuildKit) must change does a second command write it
and restart the service that reads it.
"""

from __future__ import annotations

import base64
import binascii
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from fabric import Connection, task
from invoke.context import Context

from .addresses import (
    DEFAULT_REGISTRY_PORT,
    ipv6_names_note,
    parse_ip,
    refuse_example_address,
    registry_authority,
    split_authority,
)
from .errors import HostError, InputError
from .inventory import (
    AUTO,
    DEFAULT_INVENTORY,
    Client,
    RegistrySettings,
    check_user_names,
)
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
from .registry import warn_expiry_of
from .remote import (
    DEFAULT_WORKERS,
    FileReport,
    Fleet,
    RemoteFile,
    failure_line,
    fan_out,
    positive_int,
    render_as_user,
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
    hosts_text,
    log,
    log_outcome,
    user_errors,
)
from .runtimes import (
    AUTO_DETECTED,
    DETECT,
    ROOTLESS_DOCKER_CERTS,
    RUNTIMES,
    SERVICES,
    SYSTEM_STORES,
    ConfigError,
    ca_file,
    config_file,
    edit_config,
    hosts_toml,
    hosts_toml_path,
)

SYSTEM_NOTE = (
    "running dockerd and containerd read the OS store only when they start: restart "
    "them (systemctl restart docker containerd) for it to take effect"
)


@dataclass(frozen=True)
class Registry:
    """The registry as clients reach it."""

    address: str
    port: int

    @property
    def authority(self) -> str:
        return registry_authority(self.address, self.port)

    @property
    def folder_names(self) -> list[str]:
        """The certs.d folder names clients look up for this registry.

        Always ``ADDRESS:PORT``. On 443, images may also be named without a port,
        and docker, podman and containerd then look up the bare address.
        """
        names = [self.authority]
        if self.port == 443:
            ip = parse_ip(self.address)
            bare = (
                f"[{self.address}]"
                if ip is not None and ip.version == 6
                else self.address
            )
            names.append(bare)
        return names


def trust_files(
    registry: Registry, ca_pem: bytes, runtime: str, family: str = "debian"
) -> list[RemoteFile]:
    """The files that make ``runtime`` trust the registry's CA (configs aside)."""
    if runtime not in FOLDER_RUNTIMES:
        return [RemoteFile(ca_file(runtime, registry.authority, family), ca_pem, 0o644)]
    files = []
    for name in registry.folder_names:
        files.append(RemoteFile(ca_file(runtime, name, family), ca_pem, 0o644))
        if runtime == "containerd":
            toml = hosts_toml(name).encode()
            files.append(RemoteFile(hosts_toml_path(name), toml, 0o644))
    return files


#: Runtimes that find a registry's CA by a folder named after it.
FOLDER_RUNTIMES = ("docker", "podman", "containerd")


def stray_folder_patterns(registry: Registry, certs_dir: str) -> list[str]:
    """Shell globs for folders of the same address without our exact port.

    A CA in ``certs.d/ADDRESS/`` or ``certs.d/ADDRESS:443/`` is not read for images
    named ``ADDRESS:5000/...``: a classic cause of "certificate signed by unknown
    authority".
    """
    ip = parse_ip(registry.address)
    host = (
        f"[{registry.address}]"
        if ip is not None and ip.version == 6
        else registry.address
    )
    bare = shlex.quote(f"{certs_dir}/{host}")
    patterns = [bare, f"{bare}:*", shlex.quote(f"{certs_dir}/{registry.address}")]
    return list(dict.fromkeys(patterns))


def chosen_runtimes(runtimes: Sequence[str]) -> tuple[str, ...]:
    """The runtimes a script handles: every detectable one for ``auto``."""
    if AUTO in runtimes:
        return AUTO_DETECTED
    return tuple(runtime for runtime in RUNTIMES if runtime in runtimes)


def rootless_files(registry: Registry, ca_pem: bytes) -> list[RemoteFile]:
    """The CA files a rootless Docker user gets, relative to their home (``~/``)."""
    return [
        RemoteFile(f"{ROOTLESS_DOCKER_CERTS}/{name}/ca.crt", ca_pem, 0o644)
        for name in registry.folder_names
    ]


def render_check_users(users: Sequence[str]) -> str:
    """Stop before any change when a rootless user or ``runuser`` is missing."""
    if not users:
        return ""
    names = " ".join(shlex.quote(user) for user in users)
    return (
        f"for u in {names}; do\n"
        '  getent passwd "$u" >/dev/null || { echo "no user $u on this host;" '
        '"create it, or remove it from rootless_users" >&2; exit 1; }\n'
        "done\n"
        "command -v runuser >/dev/null 2>&1 || { echo 'runuser is missing: install "
        "util-linux, which rootless_users needs' >&2; exit 1; }\n"
    )


def render_rootless(
    registry: Registry,
    ca_pem: bytes,
    users: Sequence[str],
    dry_run: bool,
    remove: bool = False,
    variants: Sequence[bytes] = (),
) -> str:
    """Install (or remove) the CA in each rootless Docker user's certs.d, as them."""
    lines = []
    files = rootless_files(registry, ca_pem)
    for number, user in enumerate(users):
        if remove:
            body = render_remove_files(files, variants)
            # A user who is gone has nothing of ours left to remove.
            lines.append(f"if getent passwd {shlex.quote(user)} >/dev/null; then")
        else:
            body = render_put_files(files, variants)
            lines.append(f"echo 'runtime docker (rootless, {user})'; found=1")
        lines.append(render_as_user(user, body, dry_run, f"AS_USER_{number}_END"))
        if remove:
            lines.append("fi")
    return "\n".join(lines) + "\n"


def _stray_check(registry: Registry, runtime: str) -> str:
    if runtime not in ("docker", "podman"):
        return ""
    certs_dir = ca_file(runtime, registry.authority).rsplit("/", 2)[0]
    ours = " ".join(
        f'&& [ "$d" != {shlex.quote(f"{certs_dir}/{name}")} ]'
        for name in registry.folder_names
    )
    patterns = " ".join(stray_folder_patterns(registry, certs_dir))
    return f'for d in {patterns}; do [ -d "$d" ] {ours} && echo "stray $d"; done\n'


def render_trust(
    registry: Registry,
    ca_pem: bytes,
    runtimes: Sequence[str],
    dry_run: bool,
    rootless_users: Sequence[str] = (),
    variants: Sequence[bytes] = (),
) -> str:
    """The one script that installs the CA for the client's runtimes.

    ``variants`` are what trust-clients may have written before (see
    ``render_untrust``); any other file in our place is the host's own, and is kept
    aside as ``PATH.orig`` for untrust-clients to put back.
    """
    auto = AUTO in runtimes
    lines = [script_header(dry_run), render_check_users(rootless_users), "found=''"]
    for runtime in chosen_runtimes(runtimes):
        if runtime == "system":
            lines.append(_render_system(registry, ca_pem, remove=False, ours=variants))
            continue
        condition = f"{{ {DETECT[runtime]}; }} >/dev/null 2>&1" if auto else "true"
        lines.append(f"if {condition}; then")
        lines.append(f"echo 'runtime {runtime}'; found=1")
        lines.append(render_put_files(trust_files(registry, ca_pem, runtime), variants))
        lines.append(_stray_check(registry, runtime))
        config = config_file(runtime)
        if config is not None:
            lines.append(f"show_file {runtime} {shlex.quote(config)}")
        if runtime == "containerd":
            lines.append(
                'echo "version containerd $(containerd --version 2>/dev/null)"'
            )
        lines.append("fi")
    lines.append(
        render_rootless(registry, ca_pem, rootless_users, dry_run, variants=variants)
    )
    lines.append("[ -n \"$found\" ] || echo 'runtime none'")
    return "\n".join(lines) + "\n"


def _render_system(
    registry: Registry, ca_pem: bytes, remove: bool, ours: Sequence[bytes] = ()
) -> str:
    """Install (or remove) the CA in the OS trust store, then rebuild the store."""
    branches = []
    for keyword, family in (("if", "debian"), ("elif", "redhat")):
        update = SYSTEM_STORES[family][1]
        tool = update.split()[0]
        files = trust_files(registry, ca_pem, "system", family)[:1]
        action = (
            render_remove_files(files, ours)
            if remove
            else render_put_files(files, ours)
        )
        done = "removed" if remove else "changed"
        branches.append(
            f"{keyword} command -v {tool} >/dev/null 2>&1; then\n"
            f"{'' if remove else 'echo runtime system; found=1'}\n"
            f"{action}"
            f'if [ "$last" = {done} ]; then {update} >/dev/null 2>&1 '
            f"&& echo 'store-updated {tool}' "
            f"|| {{ echo '{tool} failed' >&2; exit 1; }}; fi"
        )
    # Nothing to remove where there is no store we know; nothing to install is an error.
    missing = (
        ""
        if remove
        else "echo 'unsupported system: neither update-ca-certificates nor "
        "update-ca-trust is installed'"
    )
    branches.append(f"else\n{missing or ':'}\nfi")
    return "\n".join(branches)


def render_untrust(
    registry: Registry,
    ca_pem: bytes,
    runtimes: Sequence[str],
    dry_run: bool = False,
    variants: Sequence[bytes] = (),
    rootless_users: Sequence[str] = (),
) -> str:
    """The inverse of ``render_trust``: remove what it wrote, if still unmodified.

    A CA file counts as ours when it holds ``ca_pem`` or any of ``variants`` (what
    trust-clients wrote before or during a CA rotation). Config files are printed for
    the caller to edit, like ``render_trust`` does.
    """
    lines = [script_header(dry_run), "found=''"]
    # auto removes from every place trust-clients may have written to.
    for runtime in RUNTIMES if AUTO in runtimes else chosen_runtimes(runtimes):
        if runtime == "system":
            lines.append(_render_system(registry, ca_pem, remove=True, ours=variants))
            continue
        lines.append(
            render_remove_files(trust_files(registry, ca_pem, runtime), variants)
        )
        config = config_file(runtime)
        if config is not None and runtime != "containerd":
            quoted = shlex.quote(config)
            lines.append(f"[ -f {quoted} ] && show_file {runtime} {quoted}")
    lines.append(
        render_rootless(
            registry, ca_pem, rootless_users, dry_run, remove=True, variants=variants
        )
    )
    return "\n".join(lines) + "\n"


@dataclass
class ConfigFile:
    """A runtime's config file as the host has it (None: no such file)."""

    runtime: str
    mode: int
    text: str | None


@dataclass
class TrustReport:
    """What a trust or untrust script found and did on one client."""

    runtimes: list[str]
    files: FileReport
    stray: list[str] = field(default_factory=list)
    configs: list[ConfigFile] = field(default_factory=list)
    containerd_major: int = 1
    notes: list[str] = field(default_factory=list)
    store_updated: bool = False


def parse_trust(output: str) -> TrustReport:
    """Read the lines ``render_trust`` and ``render_untrust`` print."""
    files = FileReport.parse(output)
    report = TrustReport(runtimes=[], files=files)
    for line in files.other:
        word, _, rest = line.partition(" ")
        if word == "runtime" and rest != "none":
            report.runtimes.append(rest)
        elif word == "stray":
            report.stray.append(rest)
        elif word == "config":
            report.configs.append(_parse_config(rest))
        elif word == "version":
            match = re.search(r"\bv?(\d+)\.\d+", rest)
            report.containerd_major = int(match.group(1)) if match else 1
        elif word == "store-updated":
            report.store_updated = True
        elif word == "unsupported":
            report.notes.append(rest)
    return report


def _parse_config(rest: str) -> ConfigFile:
    runtime, mode, encoded = [*rest.split(" ", 2), "-", "-"][:3]
    if mode == "-":
        return ConfigFile(runtime, 0o644, None)
    try:
        text = base64.b64decode(encoded).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        text = "\0"  # not text: the editor reports it
    return ConfigFile(runtime, int(mode, 8), text)


@dataclass
class ConfigPlan:
    """Config files to write on a client, and what went wrong with the others."""

    files: list[RemoteFile] = field(default_factory=list)
    runtimes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def plan_configs(report: TrustReport, registry: Registry, remove: bool) -> ConfigPlan:
    """Edit each config file the script printed; collect the ones that change."""
    plan = ConfigPlan()
    for config in report.configs:
        path = config_file(config.runtime)
        assert path is not None, config.runtime
        try:
            if config.text is not None and "\0" in config.text:
                raise ConfigError("it is not a text file; fix it by hand first")
            edit = edit_config(
                config.runtime,
                config.text,
                registry.authority,
                report.containerd_major,
                remove,
            )
        except ConfigError as exc:
            plan.errors.append(f"{config.runtime}: {path}: {exc}")
            continue
        if edit.note:
            plan.notes.append(f"{config.runtime}: {edit.note}")
        if edit.text is not None:
            plan.files.append(RemoteFile(path, edit.text.encode(), config.mode))
            plan.runtimes.append(config.runtime)
    return plan


def render_config_writes(plan: ConfigPlan, dry_run: bool) -> str:
    """Write the changed config files, then restart what reads them, if it runs."""
    lines = [script_header(dry_run), render_put_files(plan.files)]
    if dry_run:
        return "\n".join(lines)
    for runtime in plan.runtimes:
        units = " ".join(SERVICES.get(runtime, ()))
        if not units:
            continue
        lines.append(
            "restarted=''\n"
            "if command -v systemctl >/dev/null 2>&1; then\n"
            f"  for unit in {units}; do\n"
            '    if systemctl is-active --quiet "$unit"; then\n'
            '      systemctl restart "$unit" || exit 1\n'
            '      echo "restarted $unit"; restarted=1; break\n'
            "    fi\n"
            "  done\n"
            "fi\n"
            f'[ -n "$restarted" ] || echo "restart-needed {runtime}"'
        )
    return "\n".join(lines) + "\n"


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
    "rootless_users": "Comma-separated users whose rootless Docker gets the CA in "
    "~/.config/docker/certs.d, on every client; default: per client from the "
    "inventory's rootless_users, else none.",
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
    #: Every CA file content trust-clients may have written (see trust_variants).
    ca_variants: tuple[bytes, ...] = ()


def prepare_fleet_run(
    c: Context,
    task_name: str,
    inventory: str | None,
    registry: str | None,
    runtimes: str | None,
    pki_dir: str,
    workers: int | None,
    rootless_users: str | None = None,
    installs: bool = True,
) -> FleetRun | None:
    """Load and check everything; None when an earlier -H call did the work already.

    ``installs``: the run may put the CA on clients, so the state folder must serve
    the registry address. Removing needs no such proof (only our own files go), and
    must still work for an address the certificate no longer holds.
    """
    if task_name in _ran:
        return None
    _ran.add(task_name)
    cli_hosts = command_line_hosts() if is_connection(c) else []
    no_inventory = inventory is None and not Path(DEFAULT_INVENTORY).exists()
    if cli_hosts and registry is None and no_inventory:
        raise InputError(
            "no registry: with -H, pass --registry ADDRESS[:PORT] (or an "
            "inventory with registry.address)"
        )
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
        # No port in the inventory: the one the registry was last deployed with.
        last = StateFolder(Path(pki_dir)).read_settings()
        last_port = (
            last.get("port") if last.get("address") == settings.address else None
        )
        address = settings.address
        port = settings.port or (
            last_port if isinstance(last_port, int) else DEFAULT_REGISTRY_PORT
        )
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
        if AUTO in override and len(override) > 1:
            raise InputError(
                f"--runtimes {runtimes}: list either 'auto' or runtimes, not both"
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
        clients = tuple(replace(client, runtimes=tuple(override)) for client in clients)
    users = split_list(rootless_users, "--rootless-users")
    if users is not None:
        chosen = check_user_names(users, "--rootless-users")
        clients = tuple(replace(client, rootless_users=chosen) for client in clients)

    source = (
        "-H" if cli_hosts else f"{book.path if book else DEFAULT_INVENTORY}: clients"
    )
    for client in clients:
        refuse_example_address(client.target.host, source)
    # During a CA rotation this is the current CA followed by the next one.
    state = StateFolder(Path(pki_dir))
    if installs:
        state.check_serves(address, "--registry" if registry else "registry.address")
    ca_pem = state.trust_bundle()
    warn_expiry_of(state)
    fleet = Fleet.from_config(c.config)
    if workers is not None:
        fleet.workers = positive_int(workers, "--workers", 1000)
    return FleetRun(
        Registry(address, port), clients, ca_pem, fleet, tuple(state.trust_variants())
    )


@task(help=TRUST_HELP, auto_shortflags=False)
@user_errors
def trust_clients(
    c: Context,
    inventory: str | None = None,
    registry: str | None = None,
    runtimes: str | None = None,
    rootless_users: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
    dry_run: bool = False,
    workers: int | None = None,
) -> None:
    """Install the registry's CA on every client so its runtimes trust the registry.

    Clients come from the inventory's 'clients', or from -H (then --registry or the
    inventory names the registry). On each client, for each runtime found (auto) or
    listed, the CA goes where that runtime reads it, in a folder named exactly
    ADDRESS:PORT: docker /etc/docker/certs.d, podman/CRI-O/skopeo
    /etc/containers/certs.d, containerd /etc/containerd/certs.d (ca.crt and
    hosts.toml, and config_path in config.toml), k3s/rke2 registries.yaml (merged),
    buildkit /etc/buildkit/buildkitd.toml, system the OS trust store. BuildKit and the
    OS store are only done when listed. Rootless Docker users (rootless_users) get it
    in ~/.config/docker/certs.d, written as that user. containerd, k3s and rke2 are
    restarted only when their config changed. Files are written atomically and only
    when they differ. Hosts run in parallel; a failed host does not stop the others,
    and the task exits 1 at the end if any failed. Safe to re-run. Inverse:
    untrust-clients.
    """
    run = prepare_fleet_run(
        c,
        "trust-clients",
        inventory,
        registry,
        runtimes,
        pki_dir,
        workers,
        rootless_users,
    )
    if run is None:
        return
    outcomes = on_clients(run, remove=False, dry_run=dry_run)
    finish(
        outcomes,
        None if dry_run else f"push and pull {run.registry.authority}/IMAGE",
    )


def on_clients(run: FleetRun, *, remove: bool, dry_run: bool) -> list[Outcome]:
    """Trust (or untrust) on every client, a bounded number at a time."""
    verb = "untrusting" if remove else "trusting"
    mode = " (dry run: nothing is changed)" if dry_run else ""
    log.info(
        "%s %s on %s%s",
        verb,
        run.registry.authority,
        hosts_text(len(run.clients), "client"),
        mode,
    )
    note = ipv6_names_note(run.registry.address, run.registry.authority)
    if note and not remove:
        log.warning("%s", note)

    def work(client: Client) -> Outcome:
        return on_client(run, client, remove=remove, dry_run=dry_run)

    return fan_out(
        list(run.clients),
        work,
        run.fleet.workers,
        on_done=_progress,
        on_wait=_still_running,
    )


def _progress(done: int, total: int, outcome: Outcome) -> None:
    log_outcome(outcome, done, total)


def _still_running(clients: Sequence[Client]) -> None:
    names = ", ".join(str(client.target) for client in clients[:5])
    more = f" and {len(clients) - 5} more" if len(clients) > 5 else ""
    log.info("still waiting for %d hosts: %s%s", len(clients), names, more)


def with_client(
    run: FleetRun,
    client: Client,
    work: Callable[[Connection, str], Outcome],
    prefix: str = "",
) -> Outcome:
    """Run ``work(connection, host)`` on one client, and close the connection; a
    failure there becomes that host's outcome (its reason after ``prefix``), so the
    other hosts carry on."""
    connection = run.fleet.connect(client.target)
    host = str(client.target)
    try:
        return work(connection, host)
    except HostError as exc:
        return Outcome(host, FAILED, [f"{prefix}{exc.reason}"])
    finally:
        connection.close()


def on_client(run: FleetRun, client: Client, *, remove: bool, dry_run: bool) -> Outcome:
    """Trust (or untrust) on one client; every failure becomes that host's outcome."""
    return with_client(
        run,
        client,
        lambda connection, host: _on_client(
            run, client, connection, host, remove, dry_run
        ),
    )


def _on_client(
    run: FleetRun,
    client: Client,
    connection: Connection,
    host: str,
    remove: bool,
    dry_run: bool,
) -> Outcome:
    if remove:
        script = render_untrust(
            run.registry,
            run.ca_pem,
            client.runtimes,
            dry_run,
            run.ca_variants,
            client.rootless_users,
        )
    else:
        script = render_trust(
            run.registry,
            run.ca_pem,
            client.runtimes,
            dry_run,
            client.rootless_users,
            run.ca_variants,
        )
    result = run_as_root(connection, script, what="untrust" if remove else "trust")
    if not result.ok:
        verb = "remove" if remove else "install"
        raise HostError(host, f"could not {verb} the CA: {failure_line(result)}")
    report = parse_trust(result.stdout)

    plan = plan_configs(report, run.registry, remove)
    restarts: list[str] = []
    if plan.files:
        written = run_as_root(
            connection, render_config_writes(plan, dry_run), what="config edits"
        )
        if not written.ok:
            raise HostError(
                host, f"could not write the runtime configs: {failure_line(written)}"
            )
        done = FileReport.parse(written.stdout)
        report.files.changed.extend(done.changed)
        restarts = done.other
    return client_outcome(host, report, plan, restarts, remove, dry_run)


def client_outcome(
    host: str,
    report: TrustReport,
    plan: ConfigPlan,
    restarts: Sequence[str],
    remove: bool,
    dry_run: bool,
) -> Outcome:
    """Turn what the scripts said into the host's line."""
    if not remove and not report.runtimes:
        return Outcome(
            host,
            FAILED,
            [
                "no container runtime found (docker, containerd, podman, skopeo, "
                "k3s, rke2); install one, or list runtimes for this client in the "
                "inventory",
            ],
        )
    details = [f"runtimes: {', '.join(report.runtimes)}"] if report.runtimes else []
    if remove:
        verb = "would remove" if dry_run else "removed"
        details += [f"{verb} {path}" for path in report.files.removed]
        details += [
            f"{'would edit' if dry_run else 'edited'} {file.path}"
            for file in plan.files
        ]
        details += [
            f"kept {path} (changed since we wrote it)" for path in report.files.kept
        ]
        details += [
            f"left {path}, the host's own earlier file, beside it: choose one by hand"
            for path in report.files.orig_left
        ]
        details += [
            f"{'would put' if dry_run else 'put'} back the host's own {path} from "
            f"{path}.orig"
            for path in report.files.restored
        ]
    else:
        verb = "would write" if dry_run else "wrote"
        details += [f"{verb} {path}" for path in report.files.changed]
        details += [
            f"{'would keep' if dry_run else 'kept'} the host's own "
            f"{path.removesuffix('.orig')} as {path} (untrust-clients puts it back)"
            for path in report.files.saved
        ]
    for line in restarts:
        word, _, rest = line.partition(" ")
        if word == "restarted":
            details.append(f"restarted {rest}")
        elif word == "restart-needed":
            details.append(f"{rest} is not run by systemd here: restart it to apply")
    if report.store_updated:
        details.append("rebuilt the OS trust store; " + SYSTEM_NOTE)
    details += [f"note: {note}" for note in plan.notes]
    details += [
        f"note: {folder} also exists but is not read for this registry's images"
        for folder in report.stray
    ]
    failures = plan.errors + [f"system: {note}" for note in report.notes]
    if failures:
        return Outcome(host, FAILED, details + failures)
    if not (
        report.files.changed
        or report.files.removed
        or report.files.restored
        or plan.files
    ):
        return Outcome(host, UNCHANGED, details)
    return Outcome(host, WOULD_CHANGE if dry_run else CHANGED, details)


UNTRUST_HELP = {
    **TRUST_HELP,
    "runtimes": "Comma-separated runtimes to remove the CA from, from "
    f"{', '.join((AUTO, *RUNTIMES))}; default: per client from the inventory; auto "
    "means every place trust-clients may have written to.",
    "dry_run": "Show per host what would be removed, and change nothing.",
}


@task(help=UNTRUST_HELP, auto_shortflags=False)
@user_errors
def untrust_clients(
    c: Context,
    inventory: str | None = None,
    registry: str | None = None,
    runtimes: str | None = None,
    rootless_users: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
    dry_run: bool = False,
    workers: int | None = None,
) -> None:
    """Remove from every client exactly what trust-clients installed there.

    Deletes each CA file and hosts.toml trust-clients wrote, only if it still holds
    what we wrote (a file someone changed is kept and reported), and its folder when
    that leaves it empty; removes the registry's entry from k3s/rke2 registries.yaml
    and buildkitd.toml, keeping every other entry; removes the CA from the OS store
    and from the rootless Docker users' folders.
    containerd's config_path stays, as other registries may rely on it. Same hosts and
    options as trust-clients. Safe to re-run.
    """
    run = prepare_fleet_run(
        c,
        "untrust-clients",
        inventory,
        registry,
        runtimes,
        pki_dir,
        workers,
        rootless_users,
        installs=False,
    )
    if run is None:
        return
    finish(on_clients(run, remove=True, dry_run=dry_run))
