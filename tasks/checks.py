"""Client checks: can each client really use the registry? Nothing on a host changes.

One script per client reads the trust that trust-clients installed and compares it with
our CA, makes the TLS handshake and ``GET /v2/`` with that very trust, reads the daemon
proxy settings and looks for CA folders that are named wrong, then pulls an image with
each runtime that answers (and removes it again when it was not there before). The plain
functions below turn what the script printed into findings, each with its fix; the task
at the bottom prints one line per host.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from fabric import Connection, task
from invoke.context import Context
from invoke.exceptions import Exit

from .addresses import parse_ip
from .clients import (
    TRUST_HELP,
    FleetRun,
    Registry,
    chosen_runtimes,
    prepare_fleet_run,
    stray_folder_patterns,
    with_client,
)
from .errors import HostError, InputError
from .inventory import AUTO, Client
from .options import DEFAULT_PKI_DIR
from .remote import failure_line, fan_out, run_as_root
from .report import (
    FAILED,
    OK,
    Outcome,
    hosts_text,
    log,
    log_outcome,
    recap,
    user_errors,
)
from .runtimes import (
    BUILDKIT_CONFIG,
    CONTAINERD_CERTS,
    CONTAINERS_CERTS,
    DETECT,
    DOCKER_CERTS,
    RANCHER,
    SYSTEM_STORES,
    ConfigError,
    ca_file,
    containerd_config,
    hosts_toml,
    hosts_toml_path,
)

DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
#: systemd drop-in folders whose Environment= lines give a daemon its proxy.
DROP_IN_DIRS = {
    daemon: (f"/etc/systemd/system/{daemon}.service.d",
             f"/run/systemd/system/{daemon}.service.d")
    for daemon in ("docker", "containerd")
}  # fmt: skip
#: Where a client's trust folders are, per runtime that reads a certs.d folder.
CERTS_DIRS = {
    "docker": DOCKER_CERTS,
    "podman": CONTAINERS_CERTS,
    "containerd": CONTAINERD_CERTS,
}
#: A misspelt folder name seen in the field (C03): Docker reads only certs.d.
MISSPELT_DOCKER_CERTS = "/etc/docker/cert.d"
PULL_TIMEOUT = 300

# curl exit codes (man curl, EXIT CODES): resolving, connecting, timing out or the
# connection dropping are the network's; a certificate curl refuses is trust; any other
# failure (35: handshake) is the TLS set-up of the registry.
CURL_NETWORK = {5, 6, 7, 28, 52, 55, 56}
CURL_TRUST = {51, 60, 77, 83}

# Image references as the registry accepts them (distribution's reference grammar).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})?"
)


#: What leads an image name when it names its registry: HOST[:PORT] or [IPv6]:PORT.
_REGISTRY_PART = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]+)?|\[[0-9a-fA-F:.]+\](:[0-9]+)?"
)


def _names_a_registry(name: str) -> bool:
    """Docker's rule: a first component with a dot, a port or 'localhost'."""
    first, slash, _ = name.partition("/")
    return bool(
        slash
        and _REGISTRY_PART.fullmatch(first)
        and re.search(r"[.:]|^localhost$", first)
    )


def image_reference(image: str | None, registry: Registry) -> str | None:
    """``--image`` as a name inside the registry; ``ADDRESS:PORT/`` may lead it."""
    if image is None:
        return None
    name = image.strip()
    prefix = f"{registry.authority}/"
    if name.startswith(prefix):
        name = name[len(prefix) :]
    elif _names_a_registry(name):
        raise InputError(
            f"--image {image}: names another registry; give a name in "
            f"{registry.authority}, e.g. --image team/app:1"
        )
    if not IMAGE_REFERENCE.fullmatch(name):
        raise InputError(
            f"--image {image}: not an image name; give REPOSITORY[:TAG], e.g. "
            "--image team/app:1"
        )
    return name


# The remote script ----------------------------------------------------------------

#: Shell functions of the check script. ``fetch`` asks the registry with curl,
#: trusting one CA file (or the OS store for '-'); ``probe_tls`` prints one ``tls``
#: line per trust it is given; ``check_ca`` prints a CA file's digest and probes TLS
#: once per distinct CA.
CHECK_FUNCTIONS = r"""
set -u
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
tested=' '
reach=''
good_trust=''
last_error() {
  grep -m1 -E 'verify error|x509|certificate' "$1" 2>/dev/null \
    || grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1
}
fetch() {
  f_trust=$1 f_path=$2; shift 2
  if [ "$f_trust" != - ]; then set -- --cacert "$f_trust" "$@"; fi
  curl --silent --show-error --globoff --noproxy '*' --connect-timeout 5 \
    --max-time 20 "$@" "https://$A$f_path"
}
probe_tls() {
  if command -v curl >/dev/null 2>&1; then
    tool=curl
    code=$(fetch "$1" /v2/ --output /dev/null --write-out '%{http_code}' \
      2>"$tmp/err"); rc=$?
  elif command -v openssl >/dev/null 2>&1; then
    tool=openssl
    if [ "$1" = - ]; then set -- -; else set -- "$1" -CAfile "$1"; fi
    trust=$1; shift
    printf 'GET /v2/ HTTP/1.0\r\nHost: %s\r\n\r\n' "$A" \
      | timeout 20 openssl s_client -quiet -verify_return_error $VERIFY "$@" \
        -connect "$A" >"$tmp/out" 2>"$tmp/err"; rc=$?
    code=$(sed -n '1s/^HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' "$tmp/out")
    set -- "$trust"
  else
    echo "tls $1 none 127 -"; return 0
  fi
  echo "tls $1 $tool $rc ${code:--}"
  if [ "$rc" -ne 0 ]; then echo "tlserr $1 $(last_error "$tmp/err")"; fi
  case "$tool:$rc" in
    curl:0|openssl:0) reach=1; [ -n "$good_trust" ] || good_trust=$1 ;;
    curl:5|curl:6|curl:7|curl:28|curl:52|curl:55|curl:56|openssl:124) ;;
    openssl:*) grep -q -E 'errno=|Connection refused|No route|timed out' \
      "$tmp/err" || reach=1 ;;
    *) reach=1 ;;
  esac
}
check_ca() {
  d=$(sha256sum "$2" 2>/dev/null | cut -c1-64)
  echo "ca $1 $2 ${d:--}"
  [ -n "$d" ] || return 0
  case "$tested" in *" $d "*) return 0 ;; esac
  tested="$tested$d "
  probe_tls "$2"
}
show_file() {
  if [ -f "$2" ]; then echo "file $1 $2 $(base64 -w0 <"$2")"; fi
}
"""


def _verify_flag(registry: Registry) -> str:
    """openssl's option that checks the certificate names the registry's address."""
    if parse_ip(registry.address) is not None:
        return f"-verify_ip {registry.address.strip('[]')}"
    return f"-verify_hostname {registry.address}"


def _stray_lines(registry: Registry, runtime: str) -> list[str]:
    """Print folders of the same address that the runtime does not read for it."""
    certs_dir = CERTS_DIRS.get(runtime)
    if certs_dir is None:
        return []
    ours = shlex.quote(f"{certs_dir}/{registry.authority}")
    patterns = stray_folder_patterns(registry, certs_dir)
    if runtime == "docker":
        patterns += [
            *stray_folder_patterns(registry, MISSPELT_DOCKER_CERTS),
            shlex.quote(f"{MISSPELT_DOCKER_CERTS}/{registry.authority}"),
        ]
    return [
        f'for d in {" ".join(patterns)}; do [ -d "$d" ] && [ "$d" != {ours} ] '
        '&& echo "stray $d"; done'
    ]


def _runtime_lines(registry: Registry, runtime: str) -> list[str]:
    """What the script reads for one runtime: CA files, configs, wrong folders."""
    authority = registry.authority
    if runtime == "system":
        lines = []
        for keyword, family in (("if", "debian"), ("elif", "redhat")):
            tool = SYSTEM_STORES[family][1].split()[0]
            path = shlex.quote(ca_file("system", authority, family))
            lines.append(f"{keyword} command -v {tool} >/dev/null 2>&1; then")
            lines.append(f'  p={path}; d=$(sha256sum "$p" 2>/dev/null | cut -c1-64)')
            lines.append('  echo "ca system $p ${d:--}"')
        lines.append("fi")
        # The OS store is tried as a whole: that is how programs use it.
        lines.append("probe_tls -; store_tested=1")
        return lines
    lines = [f"check_ca {runtime} {shlex.quote(ca_file(runtime, authority))}"]
    if runtime == "containerd":
        folder = f"{CONTAINERD_CERTS}/{authority}"
        hosts = shlex.quote(hosts_toml_path(authority))
        typo = shlex.quote(f"{folder}/host.toml")
        lines += [
            f'p={hosts}; d=$(sha256sum "$p" 2>/dev/null | cut -c1-64)',
            'echo "hoststoml $p ${d:--}"',
            f'p={typo}; [ -e "$p" ] && echo "hosttypo $p"',
            "if [ -f /etc/containerd/config.toml ]; then "
            "show_file containerd-config /etc/containerd/config.toml; "
            "else echo 'file containerd-config -'; fi",
            'echo "version containerd $(containerd --version 2>/dev/null)"',
        ]
    if runtime in RANCHER or runtime == "buildkit":
        config = (
            f"{RANCHER[runtime]}/registries.yaml"
            if runtime in RANCHER
            else BUILDKIT_CONFIG
        )
        quoted = shlex.quote(config)
        lines.append(
            f"if [ ! -f {quoted} ]; then echo 'mentions {runtime} {config} absent'; "
            f"elif grep -qF {shlex.quote(authority)} {quoted}; then "
            f"echo 'mentions {runtime} {config} yes'; "
            f"else echo 'mentions {runtime} {config} no'; fi"
        )
    return lines + _stray_lines(registry, runtime)


def _proxy_lines() -> list[str]:
    lines = [f"show_file docker-json {DOCKER_DAEMON_JSON}"]
    for daemon, folders in DROP_IN_DIRS.items():
        globs = " ".join(f"{shlex.quote(folder)}/*.conf" for folder in folders)
        lines.append(f'for f in {globs}; do show_file {daemon} "$f"; done')
    return lines


def _image_lines(image: str | None) -> list[str]:
    """Pick the image to pull: --image, else the first one in the registry's catalog."""
    if image is not None:
        return [f"image={shlex.quote(image)}", 'echo "image $image"']
    pick = r"""
image=''
if [ -z "$good_trust" ]; then :  # the TLS findings say why
elif ! command -v curl >/dev/null 2>&1; then echo "noimage curl is not installed here"
else
  code=$(fetch "$good_trust" '/v2/_catalog?n=1' --output "$tmp/catalog" \
    --write-out '%{http_code}' 2>/dev/null)
  repo=$(sed -n 's/.*"repositories" *: *\[ *"\([^"]*\)".*/\1/p' "$tmp/catalog")
  if [ "$code" = 401 ]; then echo "noimage the catalog needs a login"
  elif [ "$code" != 200 ]; then echo "noimage the catalog answered HTTP $code"
  elif [ -z "$repo" ]; then echo "noimage the registry holds no images yet"
  else
    fetch "$good_trust" "/v2/$repo/tags/list" --output "$tmp/tags" >/dev/null 2>&1
    tag=$(sed -n 's/.*"tags" *: *\[ *"\([^"]*\)".*/\1/p' "$tmp/tags")
    case "$repo:$tag" in
      *[!A-Za-z0-9._/:-]*) echo "noimage the catalog answered an unexpected name" ;;
      *:) echo "noimage $repo has no tags" ;;
      *) image="$repo:$tag"; echo "image $image" ;;
    esac
  fi
fi"""
    return [pick.strip()]


#: The real pulls, with each runtime the client has; ``$ref`` names the image.
PULLS = r"""
if [ -n "$rt_docker" ]; then
  if [ -z "$docker_up" ]; then echo "skip docker dockerd is not answering"
  else
    had=$(docker image inspect --format '{{.Id}}' "$ref" 2>/dev/null)
    timeout @PULL_TIMEOUT@ docker pull --quiet "$ref" >/dev/null 2>"$tmp/err"; rc=$?
    echo "pull docker $rc"
    if [ "$rc" -ne 0 ]; then echo "pullerr docker $(last_error "$tmp/err")"; fi
    # Leave the image store as it was: the check must change nothing.
    now=$(docker image inspect --format '{{.Id}}' "$ref" 2>/dev/null)
    if [ -z "$had" ] && [ -n "$now" ]; then docker rmi "$ref" >/dev/null 2>&1
    elif [ -n "$had" ] && [ -n "$now" ] && [ "$had" != "$now" ]; then
      docker tag "$had" "$ref" >/dev/null 2>&1 && docker rmi "$now" >/dev/null 2>&1
    fi
  fi
fi
if [ -n "$rt_podman" ]; then
  if command -v skopeo >/dev/null 2>&1; then
    timeout @PULL_TIMEOUT@ skopeo inspect "docker://$ref" >/dev/null 2>"$tmp/err"; rc=$?
    echo "pull skopeo $rc"
    if [ "$rc" -ne 0 ]; then echo "pullerr skopeo $(last_error "$tmp/err")"; fi
  else echo "skip skopeo skopeo is not installed"
  fi
fi
if [ -n "$rt_containerd" ]; then
  if ! command -v ctr >/dev/null 2>&1; then echo "skip ctr ctr is not installed"
  elif ! timeout 2 ctr version >/dev/null 2>&1; then
    echo "skip ctr containerd is not answering (ctr version)"
  else
    had=$(ctr images ls -q 2>/dev/null | grep -Fx "$ref")
    timeout @PULL_TIMEOUT@ ctr images pull --hosts-dir @CERTS_DIR@ "$ref" >/dev/null \
      2>"$tmp/err"; rc=$?
    echo "pull ctr $rc"
    if [ "$rc" -ne 0 ]; then echo "pullerr ctr $(last_error "$tmp/err")"; fi
    [ -n "$had" ] || ctr images rm "$ref" >/dev/null 2>&1
  fi
fi
"""


def render_check(registry: Registry, runtimes: Sequence[str], image: str | None) -> str:
    """The one script that checks a client; it prints one fact per line."""
    auto = AUTO in runtimes
    chosen = chosen_runtimes(runtimes)
    lines = [
        f"A={shlex.quote(registry.authority)}",
        f"VERIFY={shlex.quote(_verify_flag(registry))}",
        CHECK_FUNCTIONS,
        "found='' store_tested='' rt_docker='' rt_podman='' rt_containerd=''",
        "docker_up=''",
    ]
    for runtime in chosen:
        detect = DETECT.get(runtime)
        condition = f"{{ {detect}; }} >/dev/null 2>&1" if auto and detect else "true"
        lines.append(f"if {condition}; then")
        lines.append(f"echo 'runtime {runtime}'; found=1; rt_{runtime}=1")
        lines += _runtime_lines(registry, runtime)
        lines.append("fi")
    lines.append("[ -n \"$found\" ] || echo 'runtime none'")

    # With no trust installed at all, the OS store still tells the network from trust.
    lines.append('[ "$tested" != " " ] || [ -n "$store_tested" ] || probe_tls -')
    lines.append(
        'if [ -n "$rt_docker" ] && command -v docker >/dev/null 2>&1 && timeout 5 '
        "docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then\n"
        "  docker_up=1\n"
        '  echo "proxylive docker $(docker info --format '
        "'{{.HTTPSProxy}}|{{.NoProxy}}' 2>/dev/null | base64 -w0)\"\n"
        "fi"
    )
    lines += _proxy_lines()
    lines.append(
        f"grep -qF {shlex.quote(chr(34) + registry.authority + chr(34))} "
        '"${HOME:-/root}/.docker/config.json" 2>/dev/null '
        "&& echo 'login yes' || echo 'login no'"
    )
    lines += _image_lines(image)
    pulls = PULLS.replace("@PULL_TIMEOUT@", str(PULL_TIMEOUT))
    pulls = pulls.replace("@CERTS_DIR@", shlex.quote(CONTAINERD_CERTS))
    lines.append(
        f'if [ -n "$image" ] && [ -n "$reach" ]; then\nref="$A/$image"\n{pulls}fi'
    )
    # The last test's status would otherwise become the script's.
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


# What the script printed ------------------------------------------------------------


@dataclass(frozen=True)
class CaState:
    """One runtime's copy of the CA on the client; digest None: no such file."""

    runtime: str
    path: str
    digest: str | None


@dataclass(frozen=True)
class TlsProbe:
    """The handshake and ``GET /v2/`` with one trust: a CA file, or '-' (OS store)."""

    trust: str
    tool: str
    exit_code: int
    http_status: int | None
    error: str = ""


@dataclass(frozen=True)
class PullProbe:
    """A real pull (docker, ctr) or inspect (skopeo) of the image."""

    tool: str
    exit_code: int
    error: str = ""


@dataclass
class ClientCheck:
    """Everything the check script found on one client."""

    runtimes: list[str] = field(default_factory=list)
    ca_files: list[CaState] = field(default_factory=list)
    hosts_toml: tuple[str, str | None] | None = None
    host_toml_typo: list[str] = field(default_factory=list)
    containerd_config: str | None = None
    containerd_config_seen: bool = False
    containerd_major: int = 1
    mentions: list[tuple[str, str, str]] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)
    tls: list[TlsProbe] = field(default_factory=list)
    files: list[tuple[str, str, str]] = field(default_factory=list)
    live_docker_proxy: tuple[str, str] | None = None
    logged_in: bool = False
    image: str | None = None
    no_image: str | None = None
    pulls: list[PullProbe] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _decode(encoded: str) -> str:
    try:
        return base64.b64decode(encoded).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return ""


def parse_check(output: str) -> ClientCheck:
    """Read the lines ``render_check`` prints; unknown lines are ignored."""
    check = ClientCheck()
    tls_errors: dict[str, str] = {}
    pull_errors: dict[str, str] = {}
    pulls: list[tuple[str, int]] = []
    for line in output.splitlines():
        word, _, rest = line.strip().partition(" ")
        fields = rest.split(" ")
        if word == "runtime" and rest != "none":
            check.runtimes.append(rest)
        elif word == "ca" and len(fields) >= 3:
            digest = None if fields[2] == "-" else fields[2]
            check.ca_files.append(CaState(fields[0], fields[1], digest))
        elif word == "hoststoml" and len(fields) >= 2:
            check.hosts_toml = (fields[0], None if fields[1] == "-" else fields[1])
        elif word == "hosttypo":
            check.host_toml_typo.append(rest)
        elif word == "version":
            match = re.search(r"\bv?(\d+)\.\d+", rest)
            check.containerd_major = int(match.group(1)) if match else 1
        elif word == "mentions" and len(fields) >= 3:
            check.mentions.append((fields[0], fields[1], fields[2]))
        elif word == "stray" and rest not in check.stray:
            check.stray.append(rest)
        elif word == "tls" and len(fields) >= 4:
            status = int(fields[3]) if fields[3].isdigit() else None
            check.tls.append(
                TlsProbe(fields[0], fields[1], _int(fields[2]), status or None)
            )
        elif word == "tlserr":
            trust, _, message = rest.partition(" ")
            tls_errors[trust] = message.strip()
        elif word == "file" and fields[0] == "containerd-config":
            check.containerd_config_seen = True
            if len(fields) >= 2 and fields[1] != "-":
                check.containerd_config = _decode(fields[2] if len(fields) > 2 else "")
        elif word == "file" and len(fields) >= 2:
            text = _decode(fields[2]) if len(fields) > 2 else ""
            check.files.append((fields[0], fields[1], text))
        elif word == "proxylive" and len(fields) >= 2:
            proxy, _, no_proxy = _decode(fields[-1]).strip().partition("|")
            check.live_docker_proxy = (proxy.strip(), no_proxy.strip())
        elif word == "login":
            check.logged_in = rest == "yes"
        elif word == "image":
            check.image = rest
        elif word == "noimage":
            check.no_image = rest
        elif word == "pull" and len(fields) >= 2:
            pulls.append((fields[0], _int(fields[1])))
        elif word == "pullerr":
            tool, _, message = rest.partition(" ")
            pull_errors[tool] = tool_message(message)
        elif word == "skip":
            tool, _, reason = rest.partition(" ")
            check.skipped.append((tool, reason))
    check.tls = [
        TlsProbe(
            p.trust, p.tool, p.exit_code, p.http_status, tls_errors.get(p.trust, "")
        )
        for p in check.tls
    ]
    check.pulls = [
        PullProbe(tool, code, pull_errors.get(tool, "")) for tool, code in pulls
    ]
    return check


def tool_message(text: str) -> str:
    """A tool's error without its log decoration (ctr prints logfmt lines)."""
    match = re.search(r'\berror="((?:[^"\\]|\\.)*)"', text)
    if match is None:
        return text.strip()
    return re.sub(r"\\(.)", r"\1", match.group(1))


def _int(text: str) -> int:
    return int(text) if text.lstrip("-").isdigit() else -1


# Proxies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxySetting:
    """The HTTPS proxy one daemon uses, and where that was set."""

    daemon: str
    source: str
    https_proxy: str
    no_proxy: str
    no_proxy_key: str


def systemd_environment(text: str) -> dict[str, str]:
    """The variables a unit file or drop-in sets with ``Environment=``."""
    variables: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("Environment="):
            continue
        value = line[len("Environment=") :].strip()
        if not value:
            variables.clear()  # an empty assignment resets the list
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            words = value.split()
        for word in words:
            name, sep, setting = word.partition("=")
            if sep:
                variables[name] = setting
    return variables


def _first(variables: dict[str, str], *names: str) -> tuple[str, str]:
    for name in names:
        if variables.get(name):
            return name, variables[name]
    return names[0], ""


def proxy_settings(check: ClientCheck) -> tuple[list[ProxySetting], list[str]]:
    """What proxy dockerd and containerd get from their config; and broken files.

    Go programs take ``HTTPS_PROXY`` before ``https_proxy`` for https URLs (a registry
    with TLS never goes through ``HTTP_PROXY``); Docker's daemon.json ``proxies`` win
    over the environment, field by field. Drop-ins apply in the order of their names.
    """
    settings: list[ProxySetting] = []
    problems: list[str] = []
    for daemon in DROP_IN_DIRS:
        environment: dict[str, str] = {}
        sources: dict[str, str] = {}
        drop_ins = sorted(
            (item for item in check.files if item[0] == daemon),
            key=lambda item: item[1].rsplit("/", 1)[-1],
        )
        for _, path, text in drop_ins:
            for name, value in systemd_environment(text).items():
                environment[name] = value
                sources[name] = path
        proxy_name, proxy = _first(environment, "HTTPS_PROXY", "https_proxy")
        no_name, no_proxy = _first(environment, "NO_PROXY", "no_proxy")
        source = sources.get(proxy_name, "")
        no_source = f"{no_name} in {sources.get(no_name, source)}"
        if daemon == "docker":
            for _, path, text in (i for i in check.files if i[0] == "docker-json"):
                try:
                    document = json.loads(text) if text.strip() else {}
                except ValueError as exc:
                    problems.append(f"{path} is not valid JSON ({exc})")
                    continue
                configured = (
                    document.get("proxies") if isinstance(document, dict) else None
                )
                if not isinstance(configured, dict):
                    continue
                if configured.get("https-proxy"):
                    proxy, source = str(configured["https-proxy"]), path
                    no_source = f'"proxies": {{"no-proxy"}} in {path}'
                if configured.get("no-proxy"):
                    no_proxy = str(configured["no-proxy"])
                    no_source = f'"proxies": {{"no-proxy"}} in {path}'
        if proxy:
            name = "dockerd" if daemon == "docker" else "containerd"
            settings.append(ProxySetting(name, source, proxy, no_proxy, no_source))
    return settings, problems


def no_proxy_covers(no_proxy: str, address: str, port: int) -> bool:
    """Whether a Go program skips the proxy for ``address:port`` under ``no_proxy``.

    The rules of golang.org/x/net/http/httpproxy, which dockerd and containerd use:
    ``*`` covers everything; an entry is an IP, a CIDR block or a domain suffix, each
    optionally with a port; loopback addresses never use a proxy.
    """
    ip = parse_ip(address)
    host = address.strip("[]").lower()
    if host == "localhost" or (ip is not None and ip.is_loopback):
        return True
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            network = None
        if network is not None and "/" in entry:
            if ip is not None and ip in network:
                return True
            continue
        entry_host, entry_port = _split_host_port(entry)
        if entry_port and entry_port != str(port):
            continue
        entry_ip = parse_ip(entry_host)
        if entry_ip is not None:
            if ip is not None and entry_ip == ip:
                return True
            continue
        suffix = entry_host.lstrip("*")
        if suffix.startswith("."):
            if host.endswith(suffix):
                return True
        elif host == suffix or host.endswith("." + suffix):
            return True
    return False


def _split_host_port(entry: str) -> tuple[str, str]:
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""


def redact_proxy(url: str) -> str:
    """A proxy URL without its password, for output."""
    return re.sub(r"//[^/@]*@", "//***@", url)


# Findings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """What is wrong (or worth knowing) on a client, and what to do about it.

    kind: network, trust, tls, auth, proxy, stray, registry, image, runtime or config;
    a finding that is not ``fatal`` is a note on a host that passes. ``runtime`` names
    the runtime whose trust a file finding is about: a real pull with that runtime
    outweighs what the files suggest.
    """

    kind: str
    message: str
    fix: str
    fatal: bool = True
    runtime: str | None = None

    def line(self) -> str:
        prefix = "" if self.fatal else "note: "
        return f"{prefix}{self.kind}: {self.message}; {self.fix}"


@dataclass
class Verdict:
    """The findings for one client and what was proven to work."""

    findings: list[Finding] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(finding.fatal for finding in self.findings)


RUN_TRUST = "run trust-clients"


def judge(check: ClientCheck, registry: Registry, ca_pem: bytes) -> Verdict:
    """Turn what the script found into findings with fixes, and the passed checks."""
    verdict = Verdict()
    ours = hashlib.sha256(ca_pem).hexdigest()
    if not check.runtimes:
        verdict.findings.append(
            Finding(
                "runtime",
                "no container runtime found (docker, containerd, podman, skopeo, "
                "k3s, rke2)",
                "install one, or list runtimes for this client in the inventory",
            )
        )
    verdict.findings += _trust_findings(check, registry, ours)
    trusted = [state.runtime for state in check.ca_files if state.digest == ours]
    if trusted:
        verdict.passed.append(f"{', '.join(dict.fromkeys(trusted))} trust")

    tls_findings, needs_login, tls_ok = _tls_findings(check, registry, ours)
    verdict.findings += tls_findings
    if tls_ok:
        verdict.passed.append("TLS" + (" (login required)" if needs_login else ""))
    verdict.findings += _proxy_findings(check, registry)
    verdict.findings += _pull_findings(check, registry, needs_login, verdict.passed)
    verdict.findings = _weigh_pulls(verdict.findings, check.pulls)
    return verdict


#: The runtime whose trust each pull tool proves.
PULL_RUNTIMES = {"docker": "docker", "skopeo": "podman", "ctr": "containerd"}


def _weigh_pulls(findings: list[Finding], pulls: Sequence[PullProbe]) -> list[Finding]:
    """A file finding of a runtime whose real pull worked is a note, not a failure.

    Such a runtime gets its trust elsewhere (the OS store, another file name it also
    reads); trust-clients would still make it explicit.
    """
    worked = {
        PULL_RUNTIMES[probe.tool]: PULL_VERBS[probe.tool]
        for probe in pulls
        if probe.exit_code == 0 and probe.tool in PULL_RUNTIMES
    }
    weighed = []
    for finding in findings:
        verb = worked.get(finding.runtime or "")
        if finding.fatal and verb is not None:
            finding = Finding(
                finding.kind,
                f"{finding.message}, yet {verb} works (it has another trust)",
                finding.fix,
                fatal=False,
                runtime=finding.runtime,
            )
        weighed.append(finding)
    return weighed


def _trust_findings(check: ClientCheck, registry: Registry, ours: str) -> list[Finding]:
    findings = []
    authority = registry.authority
    for state in check.ca_files:
        if state.digest is None:
            problem = "missing"
        elif state.digest != ours:
            problem = "holds another CA than ours"
        else:
            continue
        findings.append(
            Finding(
                "trust", f"{state.path}: {problem}", RUN_TRUST, runtime=state.runtime
            )
        )
    # Without hosts.toml, containerd reads the *.crt files of the folder, as Docker
    # does: our ca.crt there is enough.
    containerd_ca = any(
        state.runtime == "containerd" and state.digest == ours
        for state in check.ca_files
    )
    hosts_missing = check.hosts_toml is not None and check.hosts_toml[1] is None
    if check.hosts_toml is not None:
        path, digest = check.hosts_toml
        if digest is None:
            fallback = (
                " (containerd reads the ca.crt beside it)" if containerd_ca else ""
            )
            findings.append(
                Finding(
                    "trust",
                    f"{path}: missing{fallback}",
                    RUN_TRUST,
                    fatal=not containerd_ca,
                    runtime="containerd",
                )
            )
        elif digest != hashlib.sha256(hosts_toml(authority).encode()).hexdigest():
            findings.append(
                Finding(
                    "config",
                    f"{path} differs from what trust-clients writes",
                    "make sure it names our CA, or run untrust-clients and "
                    "trust-clients",
                    fatal=False,
                )
            )
    for path in check.host_toml_typo:
        # C06: containerd reads only hosts.toml; host.toml is silently ignored.
        findings.append(
            Finding(
                "trust",
                f"{path} is not read by containerd (the name is hosts.toml)",
                f"remove it and {RUN_TRUST}",
                fatal=hosts_missing and not containerd_ca,
                runtime="containerd",
            )
        )
    if "containerd" in check.runtimes and check.containerd_config_seen:
        findings += _containerd_config_findings(check)
    for runtime, path, found in check.mentions:
        if found != "yes":
            what = (
                "does not exist" if found == "absent" else f"does not name {authority}"
            )
            findings.append(Finding("trust", f"{runtime}: {path} {what}", RUN_TRUST))
    for path in check.stray:
        # A stray folder is the cause when the exact folder beside it lacks our CA.
        folder = path.rsplit("/", 1)[0]
        if folder == MISSPELT_DOCKER_CERTS:
            folder = DOCKER_CERTS
        exact_ok = any(
            state.path.startswith(f"{folder}/{authority}/") and state.digest == ours
            for state in check.ca_files
        )
        reader = next((name for name, d in CERTS_DIRS.items() if d == folder), None)
        findings.append(
            Finding(
                "stray",
                f"{path} is not read for {authority} images (clients read a folder "
                f"named exactly {authority})",
                f"remove it{'' if exact_ok else ' and ' + RUN_TRUST}",
                fatal=not exact_ok,
                runtime=reader,
            )
        )
    return findings


def _containerd_config_findings(check: ClientCheck) -> list[Finding]:
    path = "/etc/containerd/config.toml"
    try:
        edit = containerd_config(check.containerd_config, check.containerd_major)
    except ConfigError as exc:
        return [Finding("config", f"{path}: {exc}", "fix it by hand")]
    if edit.text is not None:
        # C06: without config_path, the CRI plugin (the kubelet) ignores hosts.toml.
        return [
            Finding(
                "trust",
                f"{path} has no config_path, so containerd's CRI plugin (the "
                f"kubelet's pulls) does not read {CONTAINERD_CERTS}",
                RUN_TRUST,
            )
        ]
    if edit.note and "config_path is" in edit.note:
        return [Finding("trust", f"{path}: {edit.note}", "then restart containerd")]
    return []


def _tls_findings(
    check: ClientCheck, registry: Registry, ours: str
) -> tuple[list[Finding], bool, bool]:
    """The TLS probes' findings; whether /v2/ wants a login; whether a probe passed."""
    authority = registry.authority
    digests = {state.path: state.digest for state in check.ca_files}
    owners = {state.path: state.runtime for state in check.ca_files}
    findings: list[Finding] = []
    needs_login = False
    passed = False
    for probe in check.tls:
        trust = "the OS trust store" if probe.trust == "-" else probe.trust
        error = probe.error or f"{probe.tool} exit code {probe.exit_code}"
        if probe.tool == "none":
            findings.append(
                Finding(
                    "tls",
                    "neither curl nor openssl is installed, so TLS was not tested "
                    "directly",
                    "install curl for a complete check",
                    fatal=False,
                )
            )
            continue
        kind = _tls_failure_kind(probe)
        if kind is None:
            if probe.http_status == 401:
                needs_login = True
            if probe.http_status in (200, 401):
                passed = True
                continue
            findings.append(
                Finding(
                    "registry",
                    f"https://{authority}/v2/ answered HTTP {probe.http_status or '?'}",
                    f"check that {authority} is the registry (fab status)",
                )
            )
        elif kind == "network":
            findings.append(
                Finding(
                    "network",
                    f"cannot reach {authority} from this host ({error})",
                    f"check the firewall and the route to {authority}, and that the "
                    "registry runs (fab status)",
                )
            )
        elif kind == "trust":
            findings.append(
                Finding(
                    "trust",
                    f"TLS with {trust} fails: {error}",
                    _trust_fix(error, digests.get(probe.trust), ours, registry),
                    runtime=owners.get(probe.trust),
                )
            )
        else:
            plain = "wrong version number" in error or "packet length" in error
            findings.append(
                Finding(
                    "tls",
                    f"the TLS handshake with {authority} fails: {error}"
                    + (" (the registry answers plain HTTP?)" if plain else ""),
                    "make the registry serve TLS on that port (fab setup-registry)",
                )
            )
    return _unique(findings), needs_login, passed


def _tls_failure_kind(probe: TlsProbe) -> str | None:
    """None when the handshake and GET worked; else network, trust or tls."""
    if probe.exit_code == 0:
        return None
    if probe.tool == "curl":
        if probe.exit_code in CURL_NETWORK:
            return "network"
        if probe.exit_code in CURL_TRUST:
            return "trust"
        return "tls"
    error = probe.error.lower()
    if probe.exit_code == 124 or re.search(
        r"errno=|connection refused|no route|timed out|unreachable", error
    ):
        return "network"
    if re.search(r"verify|certificate|x509", error):
        return "trust"
    return "tls"


def _trust_fix(error: str, digest: str | None, ours: str, registry: Registry) -> str:
    text = error.lower()
    if "expired" in text or "not yet valid" in text:
        return "renew the server certificate (fab rotate-cert)"
    if "subject name" in text or "ip address mismatch" in text or "hostname" in text:
        return (
            f"the registry's certificate does not hold {registry.address}; run "
            "setup-registry with this address to reissue it"
        )
    if digest == ours:
        return (
            "the registry serves a certificate our CA did not sign; run setup-registry "
            "with this pki folder"
        )
    return RUN_TRUST


def _proxy_findings(check: ClientCheck, registry: Registry) -> list[Finding]:
    findings: list[Finding] = []
    settings, problems = proxy_settings(check)
    for problem in problems:
        findings.append(
            Finding("config", problem, "fix it: dockerd will not start with it")
        )
    address = registry.address.strip("[]")
    caught: set[str] = set()
    for setting in settings:
        if no_proxy_covers(setting.no_proxy, address, registry.port):
            continue
        caught.add(setting.daemon)
        restart = "docker" if setting.daemon == "dockerd" else "containerd"
        reload = "systemctl daemon-reload && " if "systemd" in setting.source else ""
        findings.append(
            Finding(
                "proxy",
                f"{setting.daemon} would send {registry.authority} through proxy "
                f"{redact_proxy(setting.https_proxy)} (set in {setting.source}); "
                f"no-proxy ({setting.no_proxy or 'unset'}) does not cover {address}",
                f"add {address} to {setting.no_proxy_key}, then {reload}"
                f"systemctl restart {restart}",
            )
        )
    if check.live_docker_proxy is not None and "dockerd" not in caught:
        proxy, no_proxy = check.live_docker_proxy
        if proxy and not no_proxy_covers(no_proxy, address, registry.port):
            findings.append(
                Finding(
                    "proxy",
                    f"the running dockerd sends {registry.authority} through proxy "
                    f"{redact_proxy(proxy)}; its no-proxy ({no_proxy or 'unset'}) does "
                    f"not cover {address}",
                    "restart docker to apply its current config; if that persists, "
                    f"add {address} to NO_PROXY where its environment sets the proxy",
                )
            )
    return findings


PULL_VERBS = {"docker": "docker pull", "skopeo": "skopeo inspect", "ctr": "ctr pull"}


def _pull_findings(
    check: ClientCheck, registry: Registry, needs_login: bool, passed: list[str]
) -> list[Finding]:
    findings: list[Finding] = []
    authority = registry.authority
    for probe in check.pulls:
        verb = PULL_VERBS.get(probe.tool, probe.tool)
        if probe.exit_code == 0:
            passed.append(f"{verb} {check.image}")
            continue
        kind, fix = _pull_failure(probe, registry, check.image)
        # ctr has no login of its own; a kubelet brings imagePullSecrets.
        fatal = not (kind == "auth" and probe.tool == "ctr")
        findings.append(
            Finding(
                kind, f"{verb} {authority}/{check.image}: {probe.error}", fix, fatal
            )
        )
    for tool, reason in check.skipped:
        verb = PULL_VERBS.get(tool, tool)
        findings.append(
            Finding("runtime", f"{reason}", f"{verb} not tried", fatal=False)
        )
    if check.no_image is not None:
        findings.append(
            Finding(
                "image",
                f"no pull tried: {check.no_image}",
                "push an image or pass --image REPOSITORY:TAG for a real pull",
                fatal=False,
            )
        )
    if needs_login and not any(probe.exit_code == 0 for probe in check.pulls):
        tried = any(f.kind == "auth" and f.fatal for f in findings)
        if not tried and not check.logged_in:
            findings.append(
                Finding(
                    "auth",
                    f"{authority} requires a login and this host has none",
                    "run fab login-clients --name USER (or docker login "
                    f"{authority} here)",
                )
            )
    return _unique(findings)


def _pull_failure(
    probe: PullProbe, registry: Registry, image: str | None
) -> tuple[str, str]:
    text = probe.error.lower()
    authority = registry.authority
    if re.search(r"unauthorized|authentication required|no basic auth|denied", text):
        return "auth", (
            f"run fab login-clients --name USER (or docker login {authority} here)"
        )
    if "proxyconnect" in text or "proxy" in text:
        return "proxy", f"add {registry.address} to the daemon's NO_PROXY"
    if re.search(r"x509|certificate|unknown authority|tls: failed to verify", text):
        return "trust", RUN_TRUST
    if "http response to https client" in text:
        return "tls", "make the registry serve TLS on that port (fab setup-registry)"
    if "invalid reference format" in text:
        ip = parse_ip(registry.address)
        if ip is not None and ip.version == 6:
            return "name", (
                f"this {probe.tool} cannot parse image names on an IPv6 address (its "
                "reference parser predates them): update it, or reach the registry "
                "by an IPv4 address"
            )
        return "name", f"check --image: {image} is not a valid image name"
    if re.search(r"manifest unknown|not found|name unknown", text):
        return "image", f"check the name: {image} is not in {authority}"
    if re.search(r"connection refused|no route|i/o timeout|timeout|unreachable", text):
        return "network", f"check the firewall and the route to {authority}"
    if probe.exit_code == 124:
        return "network", f"it took over {PULL_TIMEOUT}s; check the network"
    return "pull", "see the message"


def _unique(findings: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))


def check_outcome(host: str, verdict: Verdict) -> Outcome:
    """The host's line: ok with what passed, or failed with what fails and the fix.

    Fatal findings of one kind with the same fix share one entry.
    """
    fatal: dict[tuple[str, str], list[str]] = {}
    for finding in verdict.findings:
        if finding.fatal:
            fatal.setdefault((finding.kind, finding.fix), []).append(finding.message)
    notes = [finding.line() for finding in verdict.findings if not finding.fatal]
    if fatal:
        details = [
            f"{kind}: {', '.join(messages)}; {fix}"
            for (kind, fix), messages in fatal.items()
        ]
        return Outcome(host, FAILED, details + notes)
    return Outcome(host, OK, [*(verdict.passed or ["nothing to check"]), *notes])


# The task ---------------------------------------------------------------------------

CHECK_HELP = {
    **{key: TRUST_HELP[key] for key in ("inventory", "registry", "pki_dir", "workers")},
    "runtimes": "Comma-separated runtimes to check on every client (as for "
    "trust-clients); default: per client from the inventory, else auto.",
    "image": "An image in the registry to pull from each client, as REPOSITORY:TAG "
    "(e.g. team/app:1); default: the first one the registry's catalog lists.",
}


@task(help=CHECK_HELP, auto_shortflags=False)
@user_errors
def check_clients(
    c: Context,
    inventory: str | None = None,
    registry: str | None = None,
    runtimes: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
    image: str | None = None,
    workers: int | None = None,
) -> None:
    """Check from every client that it can really use the registry; change nothing.

    Same clients and options as trust-clients. On each client, over SSH: the CA file
    of each runtime is compared with pki/ca.crt; a TLS handshake and GET /v2/ are made
    with that installed trust (curl, else openssl); the HTTPS proxy of dockerd and
    containerd (daemon.json, systemd drop-ins, the running dockerd) is checked against
    NO_PROXY; CA folders for the same address without the port, or with another one,
    and containerd's host.toml typo are looked for; containerd's config_path is
    checked. Then the image is pulled with docker (and removed again if it was not
    there), inspected with skopeo, and pulled with ctr --hosts-dir when containerd
    answers. One line per host: ok and what passed, or failed with what fails
    (network, trust, tls, auth, proxy, stray, ...) and the fix; a file finding is only
    a note for a runtime whose real pull worked. Exits 1 if any host failed. Changes
    nothing and is safe to re-run; the fix is usually trust-clients. Not covered: k3s,
    rke2 and BuildKit get file checks only (no pull), podman is tested through skopeo,
    and ctr pulls through /etc/containerd/certs.d, not through the kubelet.
    """
    run = prepare_fleet_run(
        c, "check-clients", inventory, registry, runtimes, pki_dir, workers
    )
    if run is None:
        return
    wanted = image_reference(image, run.registry)
    log.info(
        "checking %s from %s",
        run.registry.authority,
        hosts_text(len(run.clients), "client"),
    )

    def work(client: Client) -> Outcome:
        return check_client(run, client, wanted)

    outcomes = fan_out(list(run.clients), work, run.fleet.workers, on_done=_progress)
    log.info("recap: %s", recap(outcomes))
    failed = [outcome.host for outcome in outcomes if outcome.failed]
    if failed:
        raise Exit(
            f"error: {', '.join(failed)} cannot use {run.registry.authority}; fix what "
            "is said above and run check-clients again",
            code=1,
        )


def _progress(done: int, total: int, outcome: Outcome) -> None:
    log_outcome(outcome, done, total)


def check_client(run: FleetRun, client: Client, image: str | None) -> Outcome:
    """Check one client; every failure becomes that host's outcome."""

    def work(connection: Connection, host: str) -> Outcome:
        script = render_check(run.registry, client.runtimes, image)
        result = run_as_root(connection, script, what="client check")
        if not result.ok:
            raise HostError(host, f"the check script failed: {failure_line(result)}")
        verdict = judge(parse_check(result.stdout), run.registry, run.ca_pem)
        return check_outcome(host, verdict)

    return with_client(run, client, work, prefix="ssh: ")
