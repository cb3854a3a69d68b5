"""The registry host: TLS files, the registry:2 container, and proof that it serves TLS.

Plain functions resolve the settings, render the probe and the action scripts, and plan
what to do from what the probe found; the task at the bottom connects and reports.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import posixpath
import shlex
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from fabric import Connection, task
from invoke.context import Context

from . import pki
from .addresses import (
    DEFAULT_REGISTRY_PORT,
    check_address,
    check_port,
    ipv6_names_note,
    parse_ip,
    refuse_example_address,
    registry_authority,
)
from .errors import HostError, InputError
from .inventory import (
    DEFAULT_CONTAINER,
    DEFAULT_DATA,
    DEFAULT_IMAGE,
    DEFAULT_REMOTE_DIR,
    Inventory,
    RegistrySettings,
    check_container_name,
    check_data,
    check_image,
    check_remote_dir,
)
from .options import (
    DEFAULT_PKI_DIR,
    HELP_INVENTORY,
    HELP_PKI_DIR,
    is_connection,
    read_inventory,
)
from .pki import StateFolder
from .remote import (
    FileReport,
    Fleet,
    RemoteFile,
    failure_line,
    host_label,
    positive_int,
    render_put_together,
    run_as_root,
    script_header,
)
from .report import CHANGED, UNCHANGED, Outcome, finish, log, log_outcome, user_errors

#: Labels that mark a container as ours, and the settings it was made with.
MANAGED_LABEL = "io.ip-registry.managed"
SPEC_LABEL = "io.ip-registry.spec"
CONTAINER_PORT = 5000
CONTAINER_CERTS = "/certs"


@dataclass(frozen=True)
class RegistrySpec:
    """Everything that decides how the registry runs, fully resolved."""

    address: str
    port: int
    extra_addresses: tuple[str, ...]
    image: str
    data: str
    remote_dir: str
    container: str
    #: The settings an option or the inventory gave; the others are defaults, which
    #: yield to what the running registry was set up with (see ``adopt_live``).
    given: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def addresses(self) -> list[str]:
        """Every address the certificate must carry, the main one first."""
        seen: list[str] = []
        for address in (self.address, *self.extra_addresses):
            if address not in seen:
                seen.append(address)
        return seen

    @property
    def authority(self) -> str:
        return registry_authority(self.address, self.port)

    @property
    def certs_dir(self) -> str:
        return f"{self.remote_dir}/certs"

    @property
    def cert_path(self) -> str:
        return f"{self.certs_dir}/registry.crt"

    @property
    def key_path(self) -> str:
        return f"{self.certs_dir}/registry.key"

    @property
    def ca_path(self) -> str:
        return f"{self.certs_dir}/ca.crt"

    @property
    def auth_dir(self) -> str:
        return f"{self.remote_dir}/auth"

    @property
    def htpasswd_path(self) -> str:
        """The users file; while it exists, the registry asks for a login."""
        return f"{self.auth_dir}/htpasswd"


def merge_setting(
    name: str,
    option: Any,
    inventory_value: Any,
    default: Any,
    inventory: Inventory | None,
) -> Any:
    """An option, else the inventory's value, else the default; refuse a
    contradiction."""
    if option is not None and inventory_value is not None and option != inventory_value:
        where = inventory.path if inventory and inventory.path else "the inventory"
        raise InputError(
            f"--{name.replace('_', '-')} {option} contradicts registry.{name}: "
            f"{inventory_value} in {where}; change one of them"
        )
    for value in (option, inventory_value):
        if value is not None:
            return value
    return default


def resolve_spec(
    settings: RegistrySettings,
    inventory: Inventory | None,
    *,
    ssh_host: str | None,
    address: str | None = None,
    port: int | None = None,
    extra_addresses: Sequence[str] = (),
    image: str | None = None,
    data: str | None = None,
    remote_dir: str | None = None,
    container: str | None = None,
    saved: Mapping[str, Any] | None = None,
) -> RegistrySpec:
    """Combine options, the inventory, the settings saved by the last deploy
    (``saved``, for the same address) and defaults.

    The address defaults to the SSH host.
    """
    resolved_address = merge_setting(
        "address", address, settings.address, None, inventory
    )
    if resolved_address is None:
        if ssh_host is None:
            raise InputError(
                "no registry address: pass -H HOST, or set registry.address in "
                "inventory.yaml (or the file given with --inventory)"
            )
        resolved_address = ssh_host
    extras = tuple(extra_addresses) or settings.extra_addresses
    last = dict(saved or {}) if (saved or {}).get("address") == resolved_address else {}
    defaults = {
        "port": DEFAULT_REGISTRY_PORT,
        "image": DEFAULT_IMAGE,
        "data": DEFAULT_DATA,
        "remote_dir": DEFAULT_REMOTE_DIR,
    }
    chosen: dict[str, Any] = {}
    given = set()
    for name, option, kept in (
        ("port", port, settings.port),
        ("image", image, settings.image),
        ("data", data, settings.data),
        ("remote_dir", remote_dir, settings.remote_dir),
    ):
        fallback = last.get(name, defaults[name])
        chosen[name] = merge_setting(name, option, kept, fallback, inventory)
        if option is not None or kept is not None or name in last:
            given.add(name)
    spec = RegistrySpec(
        address=resolved_address,
        port=int(chosen["port"]),
        extra_addresses=tuple(a for a in extras if a != resolved_address),
        image=str(chosen["image"]),
        data=str(chosen["data"]),
        remote_dir=str(chosen["remote_dir"]),
        container=merge_setting(
            "container", container, settings.container, DEFAULT_CONTAINER, inventory
        ),
        given=frozenset(given),
    )
    check_apart(spec.data, spec.remote_dir)
    return spec


def check_apart(data: str, remote_dir: str) -> None:
    """The data folder and REMOTE_DIR must not hold each other: backups would carry
    the server's private key, and teardown --purge-data would delete both."""
    if not data.startswith("/"):
        return  # a named volume
    inside = (
        data == remote_dir
        or data.startswith(remote_dir.rstrip("/") + "/")
        or remote_dir.startswith(data.rstrip("/") + "/")
    )
    if inside:
        raise InputError(
            f"data {data} and remote_dir {remote_dir} overlap (--data, --remote-dir "
            "or the inventory's registry keys); give each a folder of its own, such "
            "as /srv/registry and /opt/registry"
        )


# Probe --------------------------------------------------------------------------------


def render_probe(spec: RegistrySpec) -> str:
    """One script that reads everything the plan depends on, in marked sections."""
    name = shlex.quote(spec.container)
    image = shlex.quote(spec.image)
    return f"""
echo "@@docker"
command -v docker || echo missing
echo "@@daemon"
version=$(timeout 30 docker version --format '{{{{.Server.Version}}}}' 2>&1)
echo "$?"
echo "$version"
echo "@@container"
timeout 30 docker container inspect {name} 2>/dev/null
echo "@@image"
timeout 30 docker image inspect --format '{{{{.Id}}}}' {image} 2>/dev/null
echo "@@listeners"
ss -Hltnp 'sport = :{spec.port}' 2>/dev/null || echo unknown
echo "@@files"
sha256sum {shlex.quote(spec.cert_path)} {shlex.quote(spec.key_path)} \
  {shlex.quote(spec.ca_path)} {shlex.quote(spec.htpasswd_path)} 2>/dev/null
echo "@@ca"
cat {shlex.quote(spec.ca_path)} 2>/dev/null
echo "@@cert"
cat {shlex.quote(spec.cert_path)} 2>/dev/null
echo "@@end"
"""


@dataclass
class Probe:
    """What the registry host looks like now."""

    docker_path: str | None
    daemon_version: str | None
    daemon_error: str | None
    container: dict[str, Any] | None
    image_id: str | None
    listeners: list[str] | None  # None: could not tell
    file_digests: dict[str, str] = field(default_factory=dict)
    ca_pem: str = ""
    cert_pem: str = ""


def parse_probe(output: str) -> Probe:
    """Read the sections ``render_probe`` prints."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith("@@"):
            current = line[2:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)

    def text(name: str) -> str:
        return "\n".join(sections.get(name, [])).strip()

    docker_path = text("docker")
    daemon_rc, *daemon_lines = sections.get("daemon", ["1"]) or ["1"]
    daemon_ok = daemon_rc.strip() == "0" and bool(daemon_lines)
    daemon_said = [line for line in daemon_lines if line.strip()]
    container: dict[str, Any] | None = None
    if text("container"):
        parsed = json.loads(text("container"))
        container = parsed[0] if parsed else None
    listeners_text = text("listeners")
    listeners = (
        None
        if listeners_text == "unknown"
        else [line for line in listeners_text.splitlines() if line.strip()]
    )
    digests = {}
    for line in sections.get("files", []):
        digest, _, path = line.partition("  ")
        if path:
            digests[path.strip()] = digest
    return Probe(
        docker_path=None if docker_path in ("", "missing") else docker_path,
        daemon_version=daemon_said[-1].strip() if daemon_ok and daemon_said else None,
        daemon_error=None if daemon_ok else (daemon_said[-1] if daemon_said else None),
        container=container,
        image_id=text("image") or None,
        listeners=listeners,
        file_digests=digests,
        ca_pem=text("ca"),
        cert_pem=text("cert"),
    )


# Plan ---------------------------------------------------------------------------------


def run_arguments(spec: RegistrySpec, spec_hash: str, auth: bool = False) -> list[str]:
    """The exact ``docker run`` command for the registry container.

    With ``auth``, the registry asks for a login checked against the htpasswd file
    (bcrypt hashes only: the registry rejects every other scheme).
    """
    login = [
        "--volume", f"{spec.auth_dir}:/auth:ro",
        "--env", "REGISTRY_AUTH=htpasswd",
        "--env", f"REGISTRY_AUTH_HTPASSWD_REALM=Registry {spec.authority}",
        "--env", "REGISTRY_AUTH_HTPASSWD_PATH=/auth/htpasswd",
    ] if auth else []  # fmt: skip
    return [
        "docker", "run", "--detach",
        "--name", spec.container,
        "--restart=always",
        "--publish", f"{spec.port}:{CONTAINER_PORT}",
        "--volume", f"{spec.data}:/var/lib/registry",
        "--volume", f"{spec.certs_dir}:{CONTAINER_CERTS}:ro",
        "--env", f"REGISTRY_HTTP_ADDR=0.0.0.0:{CONTAINER_PORT}",
        "--env", f"REGISTRY_HTTP_TLS_CERTIFICATE={CONTAINER_CERTS}/registry.crt",
        "--env", f"REGISTRY_HTTP_TLS_KEY={CONTAINER_CERTS}/registry.key",
        *login,
        "--label", f"{MANAGED_LABEL}=true",
        "--label", f"{SPEC_LABEL}={spec_hash}",
        spec.image,
    ]  # fmt: skip


def spec_hash(
    spec: RegistrySpec, image_id: str, file_digests: Sequence[str], auth: bool = False
) -> str:
    """A digest of everything the running container must match. The files' digests
    are part of it, so a new certificate or users file recreates the container, which
    then serves and reads them (the registry reads both only when it starts)."""
    material = json.dumps(
        [run_arguments(spec, "", auth), image_id, sorted(file_digests)], sort_keys=True
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


@dataclass
class ContainerPlan:
    """What to do with the container: nothing, start it, or (re)create it."""

    action: str  # "keep", "start", "create", "recreate"
    reason: str


def plan_container(
    spec: RegistrySpec, probe: Probe, wanted_hash: str, host: str
) -> ContainerPlan:
    """Decide from the probe; refuse to touch a container that is not ours."""
    container = probe.container
    if container is None:
        return ContainerPlan("create", "no registry container yet")
    labels = (container.get("Config") or {}).get("Labels") or {}
    if labels.get(MANAGED_LABEL) != "true":
        raise HostError(
            host,
            f"a container named {spec.container!r} exists and was not made by this "
            "tool; remove or rename it (docker rm -f / docker rename), or pass "
            "--container with another name",
        )
    if labels.get(SPEC_LABEL) != wanted_hash:
        return ContainerPlan("recreate", "its settings or certificate changed")
    if not (container.get("State") or {}).get("Running"):
        return ContainerPlan("start", "it was stopped")
    return ContainerPlan("keep", "up to date")


def check_docker(probe: Probe, host: str) -> None:
    """Refuse early, with the fix, when docker is missing or its daemon is down."""
    if probe.docker_path is None:
        raise HostError(
            host,
            "docker is not installed; install it (Debian/Ubuntu: apt-get install "
            "docker.io) and run setup-registry again",
        )
    if probe.daemon_version is None:
        detail = f" ({probe.daemon_error})" if probe.daemon_error else ""
        raise HostError(
            host,
            f"the docker daemon is not reachable{detail}; start it (systemctl start "
            "docker) and run setup-registry again",
        )


def published_port(container: dict[str, Any] | None) -> int | None:
    """The host port a container publishes the registry on, if it runs."""
    if not container or not (container.get("State") or {}).get("Running"):
        return None
    bindings = (container.get("HostConfig") or {}).get("PortBindings") or {}
    for binding in bindings.get(f"{CONTAINER_PORT}/tcp") or []:
        if str(binding.get("HostPort", "")).isdigit():
            return int(binding["HostPort"])
    return None


def check_port_free(spec: RegistrySpec, probe: Probe, host: str) -> None:
    """Refuse when another program holds the port; our own container on it may."""
    ours = published_port(probe.container) == spec.port
    if probe.listeners and not ours:
        holder = _listener_program(probe.listeners[0])
        raise HostError(
            host,
            f"port {spec.port} is already in use by {holder}; stop it or pick another "
            "port with --port",
        )


def _listener_program(line: str) -> str:
    if 'users:(("' in line:
        return line.split('users:(("', 1)[1].split('"', 1)[0]
    return "another program"


def render_apply(
    spec: RegistrySpec,
    files_script: str,
    plan: ContainerPlan,
    arguments: Sequence[str],
    pull: bool,
) -> str:
    """The script that writes the TLS files and makes the container so."""
    lines = [files_script]
    if spec.data.startswith("/"):
        lines.append(f"mkdir -p {shlex.quote(spec.data)} || exit 1")
    if pull:
        lines.append(
            f"docker pull {shlex.quote(spec.image)} >/dev/null || "
            "{ echo 'cannot pull the image' >&2; exit 3; }"
        )
    name = shlex.quote(spec.container)
    previous = shlex.quote(f"{spec.container}-previous")
    run = f"timeout 120 {shlex.join(arguments)} >/dev/null"
    if plan.action == "recreate":
        # The old container steps aside rather than going, so that a new one that
        # cannot start (its port taken, say) gives way to it again.
        lines.append(
            f"docker rm --force {previous} >/dev/null 2>&1\n"
            f"docker rename {name} {previous} || exit 1\n"
            f"timeout 60 docker stop {previous} >/dev/null || exit 1\n"
            f"if {run}; then\n"
            f"  docker rm --force {previous} >/dev/null\n"
            "  echo 'container recreated'\n"
            "else\n"
            "  rc=$?\n"
            f"  docker rm --force {name} >/dev/null 2>&1\n"
            f"  docker rename {previous} {name} && docker start {name} >/dev/null\n"
            "  echo 'the previous container runs again' >&2\n"
            "  exit 4\n"
            "fi"
        )
    elif plan.action == "create":
        lines.append(f"{run} || exit 4")
        lines.append("echo 'container created'")
    elif plan.action == "start":
        lines.append(f"timeout 60 docker start {name} >/dev/null || exit 4")
        lines.append("echo 'container started'")
    return "\n".join(lines) + "\n"


# Verification -------------------------------------------------------------------------


@dataclass
class TlsCheck:
    """What ``https://ADDRESS:PORT/v2/`` answered when trusting only our CA."""

    ok: bool
    status: int | None = None
    served_fingerprint: str | None = None
    problem: str | None = None
    reachable: bool = True


def check_tls(
    address: str,
    port: int,
    ca_pem: bytes,
    timeout: float = 5.0,
    authorization: str | None = None,
) -> TlsCheck:
    """GET /v2/ over TLS, verifying the certificate and the IP against our CA only
    (with ``authorization`` as that header, to try a login)."""
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    ip = parse_ip(address)
    host = f"[{ip.compressed}]" if ip is not None and ip.version == 6 else address
    connection = http.client.HTTPSConnection(
        address.strip("[]"), port, context=context, timeout=timeout
    )
    try:
        headers = {"Host": f"{host}:{port}"}
        if authorization is not None:
            headers["Authorization"] = authorization
        connection.request("GET", "/v2/", headers=headers)
        response = connection.getresponse()
        der = connection.sock.getpeercert(binary_form=True) if connection.sock else None
        served = pki.fingerprint(x509.load_der_x509_certificate(der)) if der else None
        ok = response.status in (200, 401)
        problem = None if ok else f"/v2/ answered HTTP {response.status}"
        return TlsCheck(ok, response.status, served, problem)
    except ssl.SSLCertVerificationError as exc:
        return TlsCheck(False, problem=f"certificate not trusted: {exc.verify_message}")
    except ssl.SSLError as exc:
        if _answers_plain_http(address, port, timeout):
            return TlsCheck(
                False,
                problem="the registry answers plain HTTP: it started without its TLS "
                "settings",
            )
        return TlsCheck(False, problem=f"TLS handshake failed: {exc.reason or exc}")
    except (ConnectionError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return TlsCheck(False, problem=f"cannot connect: {reason}", reachable=False)
    finally:
        connection.close()


def _answers_plain_http(address: str, port: int, timeout: float) -> bool:
    connection = http.client.HTTPConnection(address.strip("[]"), port, timeout=timeout)
    try:
        connection.request("GET", "/v2/")
        return connection.getresponse().status > 0
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def wait_for_tls(
    address: str,
    port: int,
    ca_pem: bytes,
    expected_fingerprint: str | None,
    seconds: float,
) -> TlsCheck:
    """Poll until the registry serves our current certificate (any certificate of
    our CA when ``expected_fingerprint`` is None), or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        result = check_tls(address, port, ca_pem)
        wrong = expected_fingerprint not in (None, result.served_fingerprint)
        if result.ok and wrong:
            result = TlsCheck(
                False,
                result.status,
                result.served_fingerprint,
                "the registry still serves an older certificate",
            )
        if result.ok or time.monotonic() >= deadline:
            return result
        time.sleep(0.5)


def render_remote_tls_check(spec: RegistrySpec) -> str:
    """A check run on the registry host itself, for when we cannot reach it."""
    url = f"https://{spec.authority}/v2/"
    return (
        f"curl --silent --show-error --output /dev/null --write-out '%{{http_code}}' "
        f"--cacert {shlex.quote(spec.ca_path)} {shlex.quote(url)}\n"
    )


def public_addresses(spec: RegistrySpec) -> list[str]:
    """Registry addresses that are public internet addresses."""
    found = []
    for address in spec.addresses:
        ip = parse_ip(address)
        if ip is not None and ip.is_global:
            found.append(address)
    return found


def image_archive_path(value: str | None) -> Path | None:
    """Validate the local ``docker save`` archive option."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise InputError(
            f"--image-archive {value}: no such file; make it with "
            "docker save registry:2 -o registry.tar"
        )
    return path


# The task -----------------------------------------------------------------------------

SETUP_HELP = {
    "address": "Address clients use in image names (IP or name); default: the -H host.",
    "port": "Port the registry listens on; default: 5000.",
    "extra_address": "Another address for the certificate (repeatable), e.g. a "
    "private IP beside the public one.",
    "image": "Registry image to run; default: registry:2.",
    "image_archive": "A `docker save` tarball of the image, uploaded and loaded when "
    "the host lacks the image (air-gapped hosts); default: none, pull instead.",
    "data": "Named volume or absolute host path for the registry's data; default: "
    "registry-data.",
    "remote_dir": "Folder on the registry host for its TLS files; default: "
    "/opt/registry.",
    "container": "Name of the registry container; default: registry.",
    "inventory": HELP_INVENTORY,
    "pki_dir": HELP_PKI_DIR,
    "key_type": f"Key type for a new CA or certificate: {', '.join(pki.KEY_TYPES)}; "
    f"default: {pki.DEFAULT_KEY_TYPE}.",
    "server_days": f"Validity of a new server certificate in days; default: "
    f"{pki.DEFAULT_SERVER_DAYS}.",
    "ca_days": f"Validity of a new CA in days; default: {pki.DEFAULT_CA_DAYS}.",
    "no_name_constraints": "Make a new CA without name constraints (it could then "
    "vouch for any site); default: constrained to the registry's addresses.",
    "replace_ca": "Replace a registry the host runs with another CA; its clients "
    "then need trust-clients again. Default: refuse.",
}


@task(help=SETUP_HELP, iterable=["extra_address"], auto_shortflags=False)
@user_errors
def setup_registry(
    c: Context,
    address: str | None = None,
    port: int | None = None,
    extra_address: list[str] | None = None,
    image: str | None = None,
    image_archive: str | None = None,
    data: str | None = None,
    remote_dir: str | None = None,
    container: str | None = None,
    inventory: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
    key_type: str | None = None,
    server_days: str | None = None,
    ca_days: str | None = None,
    no_name_constraints: bool = False,
    replace_ca: bool = False,
) -> None:
    """Run a TLS registry on the -H host, with a CA and IP-SAN certificate made here.

    Makes (once) a private CA and a server certificate for the registry's addresses in
    the state folder (pki/), uploads the certificate and its key to REMOTE_DIR/certs on
    the registry host (the CA key never leaves this machine), runs the registry
    container with TLS, --restart=always and a persistent data volume, then checks that
    https://ADDRESS:PORT/v2/ answers with our certificate, trusting only our CA.

    The host comes from -H, else from registry.ssh or registry.address in the inventory.
    Safe to re-run: unchanged settings change nothing; changed settings recreate the
    container and keep its data. Next: fab trust-clients.
    """
    if key_type is not None and key_type not in pki.KEY_TYPES:
        raise InputError(
            f"--key-type {key_type}: use one of {', '.join(pki.KEY_TYPES)}"
        )
    server_lifetime = (
        None
        if server_days is None
        else positive_int(server_days, "--server-days", pki.MAX_DAYS)
    )
    ca_lifetime = (
        None if ca_days is None else positive_int(ca_days, "--ca-days", pki.MAX_DAYS)
    )
    if container is not None:
        container = check_container_name(container, "--container")
    archive = image_archive_path(image_archive)
    spec, connection = open_registry(
        c,
        inventory,
        pki_dir,
        address=check_address(address, "--address") if address else None,
        port=check_port(port, "--port") if port is not None else None,
        extra_addresses=[
            check_address(extra, "--extra-address") for extra in extra_address or []
        ],
        image=check_image(image, "--image") if image is not None else None,
        data=check_data(data, "--data") if data else None,
        remote_dir=check_remote_dir(remote_dir, "--remote-dir") if remote_dir else None,
        container=container,
    )

    outcome = certify_and_deploy(
        spec,
        connection,
        StateFolder(Path(pki_dir)),
        key_type=key_type,
        server_days=server_lifetime,
        ca_days=ca_lifetime,
        constrain=False if no_name_constraints else None,
        archive=archive,
        replace_ca=replace_ca,
    )
    finish(
        [outcome],
        f"fab trust-clients (clients from the inventory), or fab -H CLIENT1,CLIENT2 "
        f"trust-clients --registry {spec.authority}",
    )


def probe_registry(connection: Connection, spec: RegistrySpec) -> Probe:
    """What the registry host looks like now, in one remote command."""
    result = run_as_root(connection, render_probe(spec), what="registry probe")
    return parse_probe(result.stdout)


def certify_and_deploy(
    spec: RegistrySpec,
    connection: Connection,
    state: StateFolder,
    *,
    key_type: str | None = None,
    server_days: int | None = None,
    ca_days: int | None = None,
    constrain: bool | None = None,
    archive: Path | None = None,
    new_server_cert: bool = False,
    replace_ca: bool = False,
    existing_only: bool = False,
    report: bool = True,
    notes: Sequence[str] = (),
    before_deploy: Callable[[Probe, RegistrySpec], Sequence[str]] | None = None,
) -> Outcome:
    """Make or reuse the CA and server certificate, deploy, verify, and report.

    ``notes`` are changes the caller made on the host before, reported first.
    ``before_deploy`` changes the host once every check has passed, under the state
    folder's lock, given the probe and the spec as resolved, and returns its notes:
    a failed check then leaves the host as it was. ``existing_only``: a day-two
    change, which must not bring back a registry that teardown removed. ``report``:
    log the host's line here (else the caller folds the outcome into its own).
    """
    with state.locked():
        # The host's CA is checked before anything is made or changed here.
        host = host_label(connection)
        probe = probe_registry(connection, spec)
        check_docker(probe, host)
        spec, kept = adopt_live(spec, probe.container, keep_given=True)
        for kept_note in kept:
            log.info("%s: %s", host, kept_note)
        if kept:
            probe = probe_registry(connection, spec)  # the image, port... it runs
        if existing_only and probe.container is None:
            raise HostError(
                host,
                f"no registry container {spec.container!r}; run setup-registry "
                "first (teardown removed it?)",
            )
        known = state.known_ca_fingerprints() if state.ca_cert_path.exists() else set()
        check_same_ca(probe, known, spec, host, replace_ca)
        ca = state.ensure_ca(
            spec.addresses, key_type=key_type, days=ca_days, constrain=constrain
        )
        before = served_addresses(state)
        server = state.ensure_server_cert(
            ca,
            spec.addresses,
            key_type=key_type,
            days=server_days,
            force=new_server_cert,
        )
        dropped = [
            address
            for address in before
            if address not in pki.cert_addresses(server.cert)
        ]
        changes = before_deploy(probe, spec) if before_deploy is not None else []
        if changes:
            notes = [*notes, *changes]
            probe = probe_registry(connection, spec)  # what it changed counts too
        outcome, auth = deploy_registry(connection, spec, ca, server, archive, probe)
        state.save_settings(
            {
                "address": spec.address,
                "port": spec.port,
                "image": spec.image,
                "data": spec.data,
                "remote_dir": spec.remote_dir,
            }
        )

    for change in (*reversed(notes), server.change, ca.change):
        if change:
            outcome.details.insert(0, change)
            outcome.status = CHANGED
    if report:
        log_outcome(outcome)
    if dropped:
        log.warning(
            "warning: the new certificate leaves out %s, which neither the options "
            "nor the inventory name any more: clients that use it will fail; to keep "
            "it, add it to registry.extra_addresses in the inventory and run "
            "setup-registry again",
            ", ".join(dropped),
        )
    log.info("CA fingerprint (SHA-256): %s", pki.fingerprint(ca.cert))
    warn_expiry(ca.cert, "CA", state.ca_cert_path)
    warn_expiry(server.cert, "server certificate", state.server_cert_path)
    note = ipv6_names_note(spec.address, spec.authority)
    if note:
        log.warning("%s", note)
    exposed = [] if auth else public_addresses(spec)
    if exposed:
        log.warning(
            "warning: the registry listens on public address %s without "
            "authentication: anyone can push and pull; restrict the port with a "
            "firewall",
            ", ".join(exposed),
        )
    return outcome


def saved_settings(state: StateFolder) -> dict[str, Any]:
    """The settings the last deploy saved in the state folder, each checked."""
    found = state.read_settings()
    checks: dict[str, Callable[[object, str], Any]] = {
        "address": check_address,
        "port": check_port,
        "image": check_image,
        "data": check_data,
        "remote_dir": check_remote_dir,
    }
    return {
        name: check(found[name], f"{state.settings_path}: {name}")
        for name, check in checks.items()
        if name in found
    }


def open_registry(
    c: Context, inventory: str | None, pki_dir: str = DEFAULT_PKI_DIR, **options: Any
) -> tuple[RegistrySpec, Connection]:
    """Resolve the registry's settings and a connection to its host.

    The host is Fabric's -H host, else registry.ssh or registry.address from the
    inventory; ``options`` are the task's own overrides, checked against the inventory.
    Settings neither gives are the ones the last deploy saved in ``pki_dir``, then
    the defaults. Nothing is contacted here: a bad setting stops the task before any
    connection.
    """
    book = read_inventory(inventory, required=False)
    settings = book.registry if book else RegistrySettings()
    connection_host = c.host if is_connection(c) else None
    spec = resolve_spec(
        settings,
        book,
        ssh_host=connection_host or (settings.ssh.host if settings.ssh else None),
        saved=saved_settings(StateFolder(Path(pki_dir))),
        **options,
    )
    ssh_host = connection_host or (settings.ssh.host if settings.ssh else spec.address)
    if connection_host:
        source = "-H"
    else:
        key = "registry.ssh" if settings.ssh else "registry.address"
        source = f"{book.path}: {key}" if book else "the registry address"
    refuse_example_address(ssh_host, source)
    if connection_host is not None and book is not None:
        check_host_is_registry(connection_host, settings, spec, book)
    fleet = Fleet.from_config(c.config)
    if isinstance(c, Connection):
        fleet.known_hosts.prepare(c)
        return spec, c
    return spec, fleet.connect(settings.ssh or spec.address)


#: Exit code of ``inspect_container``'s script when docker itself cannot answer.
NO_DOCKER = 7


def inspect_container(
    connection: Connection, spec: RegistrySpec, template: str | None = None
) -> str | None:
    """``docker container inspect`` of the registry container; None if it is absent.

    A daemon that does not answer is an error, never "no container": a task that
    took one for the other would report a registry gone that still runs.
    """
    name = shlex.quote(spec.container)
    form = f"--format {shlex.quote(template)} " if template else ""
    result = run_as_root(
        connection,
        f"command -v docker >/dev/null 2>&1 || {{ echo 'docker is not installed' >&2;"
        f" exit {NO_DOCKER}; }}\n"
        f"if out=$(timeout 30 docker container inspect {form}{name} 2>&1); then\n"
        '  printf "%s\\n" "$out"\n'
        'elif printf "%s" "$out" | grep -qi "no such"; then\n'
        "  exit 0\n"
        "else\n"
        '  echo "the docker daemon is not reachable ($(printf "%s" "$out" | tail -n1))"'
        f" >&2; exit {NO_DOCKER}\n"
        "fi\n",
        what="inspect",
    )
    if not result.ok:
        raise HostError(
            host_label(connection),
            f"{failure_line(result)}; start docker (systemctl start docker) and run "
            "the task again",
        )
    return result.stdout if result.stdout.strip() else None


def live_settings(container: dict[str, Any] | None) -> dict[str, Any]:
    """The settings a registry container of ours runs with: port, image, data and
    remote_dir, as far as it shows them."""
    if not container:
        return {}
    config = container.get("Config") or {}
    if (config.get("Labels") or {}).get(MANAGED_LABEL) != "true":
        return {}
    found: dict[str, Any] = {}
    if config.get("Image"):
        found["image"] = config["Image"]
    bindings = (container.get("HostConfig") or {}).get("PortBindings") or {}
    for binding in bindings.get(f"{CONTAINER_PORT}/tcp") or []:
        if str(binding.get("HostPort", "")).isdigit():
            found["port"] = int(binding["HostPort"])
    for mount in container.get("Mounts") or []:
        source = mount.get("Name") if mount.get("Type") == "volume" else None
        source = source or mount.get("Source")
        if not source:
            continue
        if mount.get("Destination") == "/var/lib/registry":
            found["data"] = source
        elif mount.get("Destination") == CONTAINER_CERTS:
            found["remote_dir"] = posixpath.dirname(source.rstrip("/"))
    return found


def adopt_live(
    spec: RegistrySpec, container: dict[str, Any] | None, keep_given: bool
) -> tuple[RegistrySpec, list[str]]:
    """``spec`` with the settings the running registry has, and a note for each.

    With ``keep_given``, an option or the inventory still wins (that is how a
    setting changes); only defaults yield. Without, every setting follows the
    container: a task that only reads or copies acts on the registry as it runs.
    """
    changes: dict[str, Any] = {}
    notes = []
    for name, value in live_settings(container).items():
        wanted = getattr(spec, name)
        if value == wanted or (keep_given and name in spec.given):
            continue
        changes[name] = value
        notes.append(
            f"the registry runs with {name} {value} (not {wanted}): keeping that; set "
            f"registry.{name} in the inventory to say so"
        )
    return (replace(spec, **changes) if changes else spec), notes


def live_spec(connection: Connection, spec: RegistrySpec) -> RegistrySpec:
    """``spec`` with the settings the registry container really uses.

    Day-two tasks act on the registry as it runs: the inventory may say otherwise
    (setup-registry was given --data, or the file changed since).
    """
    found = inspect_container(connection, spec)
    lines = (found or "").strip()
    if not lines:
        return spec
    try:
        container = (json.loads(lines) or [None])[0]
    except ValueError:
        return spec
    adopted, notes = adopt_live(spec, container, keep_given=False)
    for note in notes:
        log.info("%s: %s", host_label(connection), note)
    return adopted


def check_host_is_registry(
    host: str, settings: RegistrySettings, spec: RegistrySpec, book: Inventory
) -> None:
    """Refuse a -H that the inventory says is not the registry's host.

    -H may be an SSH alias or another address of the same machine, so only a clear
    contradiction stops: registry.ssh names another host, or -H is an IP address
    that is none of the registry's addresses.
    """
    where = book.path or "the inventory"
    if settings.ssh is not None:
        if host != settings.ssh.host:
            raise InputError(
                f"-H {host} contradicts registry.ssh: {settings.ssh} in {where}; "
                "drop -H or change one of them"
            )
        return
    if settings.address is None or parse_ip(host) is None:
        return
    if (
        all(parse_ip(a) is not None for a in spec.addresses)
        and host not in spec.addresses
    ):
        raise InputError(
            f"-H {host} is none of the registry's addresses "
            f"({', '.join(spec.addresses)}) in {where}; fix -H, or if SSH reaches the "
            f"registry host at {host}, say so with registry.ssh: {host}"
        )


def deploy_registry(
    connection: Connection,
    spec: RegistrySpec,
    ca: pki.Issued,
    server: pki.Issued,
    archive: Path | None,
    probe: Probe,
) -> tuple[Outcome, bool]:
    """Bring the registry host to the wanted state and prove it serves TLS.

    ``probe`` is what the host looked like, already checked (docker, its CA).
    Returns the outcome and whether the registry asks for a login.
    """
    host = host_label(connection)
    details: list[str] = []
    for note in (data_moved(probe.container, spec), legacy_certificate(probe.cert_pem)):
        if note:
            details.append(note)

    image_id = probe.image_id
    if image_id is None:
        image_id = ensure_image(connection, spec, archive)
        details.append(f"loaded image {spec.image}")

    files = [
        RemoteFile(spec.cert_path, pki.cert_pem(server.cert), 0o644),
        RemoteFile(spec.key_path, pki.key_pem(server.key), 0o600),
        RemoteFile(spec.ca_path, pki.cert_pem(ca.cert), 0o644),
    ]
    digests = [item.digest for item in files]
    users_digest = probe.file_digests.get(spec.htpasswd_path)
    auth = users_digest is not None
    if users_digest is not None:
        digests.append(users_digest)
    wanted = spec_hash(spec, image_id, digests, auth)
    plan = plan_container(spec, probe, wanted, host)
    check_port_free(spec, probe, host)
    script = render_apply(
        spec,
        script_header(False) + render_put_together(files),
        plan,
        run_arguments(spec, wanted, auth),
        pull=False,
    )
    result = run_as_root(connection, script, what="registry apply")
    if not result.ok:
        raise HostError(host, f"{apply_failure(result.exited)}: {failure_line(result)}")
    report = FileReport.parse(result.stdout)
    details.extend(f"wrote {path}" for path in report.changed)
    details.extend(line for line in report.other if line.startswith("container"))

    verify_registry(connection, spec, ca, server)
    details_status = CHANGED if details else UNCHANGED
    details.append(f"https://{spec.authority}/v2/ serves our certificate over TLS")
    if auth:
        details.append(f"login required (users in {spec.htpasswd_path})")
    return Outcome(host, details_status, details), auth


def check_same_ca(
    probe: Probe, known: set[str], spec: RegistrySpec, host: str, replace_ca: bool
) -> None:
    """Refuse to put a registry of another CA where clients trust the one there.

    ``known`` holds the fingerprints of our CAs: two during a rotation, none before
    this folder has made one (then any CA on the host is another's).
    """
    if not probe.ca_pem or replace_ca:
        return
    try:
        there = x509.load_pem_x509_certificate(probe.ca_pem.encode())
    except ValueError:
        return
    if pki.fingerprint(there) in known:
        return
    raise HostError(
        host,
        f"its registry was set up with another CA ({spec.ca_path}, SHA-256 "
        f"{pki.fingerprint(there)[:23]}...), which its clients trust; run from the "
        "folder whose pki/ holds that CA (or pass --pki-dir), or pass --replace-ca "
        "and then run trust-clients on every client",
    )


def legacy_certificate(cert_pem: str) -> str | None:
    """A note when the certificate we replace had no IP or DNS subjectAltName."""
    if not cert_pem:
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        return None
    if pki.cert_addresses(cert):
        return None
    return (
        "replaced a certificate without subjectAltName, the cause of Go clients' "
        "'x509: certificate relies on legacy Common Name field'"
    )


def data_moved(container: dict[str, Any] | None, spec: RegistrySpec) -> str | None:
    """A note when the registry's data location changes: the images stay behind."""
    before = live_settings(container).get("data")
    if before and before != spec.data:
        return (
            f"note: the data moves from {before} to {spec.data}; the images in "
            f"{before} stay there (set data back to serve them)"
        )
    return None


def apply_failure(code: int) -> str:
    return {
        3: "could not pull the registry image",
        4: "could not start the registry container",
    }.get(code, "could not write the TLS files")


def ensure_image(
    connection: Connection, spec: RegistrySpec, archive: Path | None
) -> str:
    """Load the image from ``archive`` (air-gapped hosts) or pull it; return its ID."""
    host = host_label(connection)
    image = shlex.quote(spec.image)
    inspect = f"docker image inspect --format '{{{{.Id}}}}' {image}"
    if archive is None:
        result = run_as_root(
            connection, f"docker pull {image} >/dev/null && {inspect}\n", what="pull"
        )
        if not result.ok:
            raise HostError(
                host,
                f"cannot pull {spec.image} ({failure_line(result)}); on a host without "
                "internet access pass --image-archive FILE made with "
                f"docker save {spec.image} -o FILE",
            )
        return result.stdout.strip().splitlines()[-1]
    made = connection.run("mktemp", hide=True, in_stream=False, warn=True)
    if not made.ok:
        raise HostError(host, f"cannot make a temporary file: {failure_line(made)}")
    remote = made.stdout.strip()
    try:
        log.info(
            "%s: uploading %s (%d MB)", host, archive.name, archive.stat().st_size >> 20
        )
        connection.put(str(archive), remote=remote)
        result = run_as_root(
            connection,
            f"docker load --input {shlex.quote(remote)} >/dev/null && {inspect}\n",
            what="docker load",
        )
    except OSError as exc:
        raise HostError(
            host,
            f"cannot upload {archive} to {remote}: {exc.strerror or exc}; is the "
            "host's disk (or /tmp) full?",
        ) from None
    finally:
        connection.run(
            f"rm -f {shlex.quote(remote)}", hide=True, warn=True, in_stream=False
        )
    if not result.ok:
        raise HostError(
            host,
            f"{archive} did not provide image {spec.image} ({failure_line(result)}); "
            f"make it with docker save {spec.image} -o FILE",
        )
    return result.stdout.strip().splitlines()[-1]


def verify_registry(
    connection: Connection, spec: RegistrySpec, ca: pki.Issued, server: pki.Issued
) -> None:
    """Never report success unless /v2/ answered over TLS with our certificate."""
    host = host_label(connection)
    ca_pem = pki.cert_pem(ca.cert)
    result = wait_for_tls(
        spec.address, spec.port, ca_pem, pki.fingerprint(server.cert), seconds=30
    )
    if result.ok:
        return
    if not result.reachable:
        # This machine may not reach the address (NAT, firewall): ask the host itself.
        remote = run_as_root(
            connection, render_remote_tls_check(spec), what="TLS check"
        )
        if remote.ok and remote.stdout.strip() in ("200", "401"):
            log.info(
                "%s: checked from the registry host itself; this machine cannot reach "
                "%s (%s)",
                host,
                spec.authority,
                result.problem,
            )
            return
    raise HostError(
        host,
        f"https://{spec.authority}/v2/ failed the TLS check: {result.problem}; see "
        f"docker logs {spec.container} on the host and run setup-registry again",
    )


#: What renews each kind of certificate, for the warning.
RENEWAL = {"CA": "fab rotate-ca", "server certificate": "fab rotate-cert"}


def warn_expiry(cert: x509.Certificate, what: str, path: Path) -> None:
    """Warn ahead of time; an expired CA or certificate stops every pull."""
    left = pki.days_left(cert)
    if left >= pki.RENEW_DAYS:
        return
    day = f"{cert.not_valid_after_utc:%Y-%m-%d}"
    when = f"expired on {day}" if left < 0 else f"expires in {left} days, on {day}"
    log.warning(
        "warning: the %s (%s) %s; renew it: %s", what, path, when, RENEWAL[what]
    )


def served_addresses(state: StateFolder) -> list[str]:
    """The addresses of the state folder's server certificate; none if unreadable."""
    try:
        cert = x509.load_pem_x509_certificate(state.server_cert_path.read_bytes())
    except (OSError, ValueError):
        return []
    return pki.cert_addresses(cert)


def warn_expiry_of(state: StateFolder) -> None:
    """Warn of the state folder's CA and server certificate, where they can be read.

    For tasks that do not use them otherwise: a missing or damaged file is the
    business of the tasks that do.
    """
    for what, path in (
        ("CA", state.ca_cert_path),
        ("server certificate", state.server_cert_path),
    ):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            continue
        warn_expiry(cert, what, path)
