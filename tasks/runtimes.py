"""Where each container runtime reads a registry's CA, and how its config must say so.

Plain functions only: file paths, file contents, and edits of config files that keep
everything else in them (TOML with tomlkit, YAML with ruamel.yaml, both round-trip).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import tomlkit
import tomlkit.exceptions
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

#: Every runtime whose trust we install, in the order we report them.
RUNTIMES = ("docker", "containerd", "podman", "k3s", "rke2", "buildkit", "system")
#: What ``auto`` looks for. The OS store and BuildKit change more than one program's
#: trust, so they are only done when listed.
AUTO_DETECTED = ("docker", "containerd", "podman", "k3s", "rke2")

DOCKER_CERTS = "/etc/docker/certs.d"
CONTAINERS_CERTS = "/etc/containers/certs.d"
CONTAINERD_CERTS = "/etc/containerd/certs.d"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
BUILDKIT_CERTS = "/etc/buildkit/certs.d"
#: Where rootless Docker reads registry CAs: ``$XDG_CONFIG_HOME/docker/certs.d``, and
#: XDG_CONFIG_HOME is ~/.config unless the user's session sets it otherwise.
ROOTLESS_DOCKER_CERTS = "~/.config/docker/certs.d"
BUILDKIT_CONFIG = "/etc/buildkit/buildkitd.toml"
RANCHER = {"k3s": "/etc/rancher/k3s", "rke2": "/etc/rancher/rke2"}
SYSTEM_STORES = {
    # family: (folder of extra CAs, command that rebuilds the store)
    "debian": ("/usr/local/share/ca-certificates", "update-ca-certificates"),
    "redhat": ("/etc/pki/ca-trust/source/anchors", "update-ca-trust extract"),
}

#: How ``auto`` recognises a runtime on a host: its programs or its config folder.
DETECT = {
    "docker": "command -v dockerd || command -v docker || [ -d /etc/docker ]",
    "containerd": "command -v containerd || [ -f /etc/containerd/config.toml ]",
    "podman": (
        "command -v podman || command -v skopeo || command -v crio "
        "|| command -v buildah || [ -d /etc/containers ]"
    ),
    "k3s": "command -v k3s || [ -d /etc/rancher/k3s ]",
    "rke2": "command -v rke2 || [ -d /etc/rancher/rke2 ]",
}

#: The systemd units to restart when a runtime's config changed, first active wins.
SERVICES = {
    "containerd": ("containerd",),
    "k3s": ("k3s", "k3s-agent"),
    "rke2": ("rke2-server", "rke2-agent"),
}


class ConfigError(ValueError):
    """A config file on the host cannot be read or safely changed."""


@dataclass(frozen=True)
class CaFile:
    """A copy of the CA that one runtime reads."""

    runtime: str
    path: str


def safe_file_name(authority: str) -> str:
    """``ADDRESS:PORT`` made safe for tools that dislike ':' or brackets in names."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", authority.replace("[", "").replace("]", ""))


def ca_file(runtime: str, authority: str, family: str = "debian") -> str:
    """Where ``runtime`` reads the CA for the registry at ``authority``."""
    if runtime == "docker":
        return f"{DOCKER_CERTS}/{authority}/ca.crt"
    if runtime == "podman":
        return f"{CONTAINERS_CERTS}/{authority}/ca.crt"
    if runtime == "containerd":
        return f"{CONTAINERD_CERTS}/{authority}/ca.crt"
    if runtime in RANCHER:
        return f"{RANCHER[runtime]}/certs.d/{authority}/ca.crt"
    if runtime == "buildkit":
        return f"{BUILDKIT_CERTS}/{authority}/ca.crt"
    if runtime == "system":
        folder = SYSTEM_STORES[family][0]
        return f"{folder}/ip-registry-{safe_file_name(authority)}.crt"
    raise ValueError(f"unknown runtime {runtime!r}")


def hosts_toml(authority: str) -> str:
    """containerd's ``hosts.toml`` for the registry: its own server, with our CA."""
    server = f"https://{authority}"
    return (
        "# Written by ip-registry (trust-clients): this registry's CA for containerd.\n"
        f'server = "{server}"\n'
        "\n"
        f'[host."{server}"]\n'
        '  capabilities = ["pull", "resolve", "push"]\n'
        f'  ca = "{ca_file("containerd", authority)}"\n'
    )


def hosts_toml_path(authority: str) -> str:
    return f"{CONTAINERD_CERTS}/{authority}/hosts.toml"


# containerd's config.toml ---------------------------------------------------------


@dataclass
class Edit:
    """A config file's new text (None: leave it as it is) and what to tell the user."""

    text: str | None
    note: str | None = None


def _registry_table_path(version: int) -> tuple[str, ...]:
    if version >= 3:
        return ("plugins", "io.containerd.cri.v1.images", "registry")
    if version == 2:
        return ("plugins", "io.containerd.grpc.v1.cri", "registry")
    return ("plugins", "cri", "registry")


def containerd_config(current: str | None, major: int) -> Edit:
    """Make containerd's CRI plugin (the kubelet's way in) read ``certs.d``.

    The key is ``config_path``; its section depends on the config file's ``version``
    (containerd 2.x migrates older files itself), and a new file gets the format of the
    installed major version. containerd 2.x reads ``/etc/containerd/certs.d`` by
    default, so it needs no file at all.
    """
    if current is None or not current.strip():
        if major >= 2:
            return Edit(None)
        document = tomlkit.document()
        document["version"] = 2
        current_version = 2
    else:
        document = _parse_toml(current)
        version = document.get("version", 1)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ConfigError(
                f"its version is {_shown(version)}, not a number such as 2; fix it "
                "by hand first"
            )
        current_version = int(version)

    disabled = document.get("disabled_plugins", [])
    if not isinstance(disabled, list):
        raise ConfigError("its disabled_plugins is not a list; fix it by hand first")
    if any(str(name) in ("cri", "io.containerd.grpc.v1.cri") for name in disabled):
        return Edit(
            None,
            "its CRI plugin is disabled (as Docker's packages ship it), so no kubelet "
            "pulls through it; hosts.toml serves ctr --hosts-dir",
        )

    table: Any = document
    walked: list[str] = []
    for key in _registry_table_path(current_version):
        walked.append(key)
        if key not in table:
            table[key] = tomlkit.table(is_super_table=key == "plugins")
        table = table[key]
        if not isinstance(table, dict):
            raise ConfigError(
                f"its {'.'.join(repr(k) if '.' in k else k for k in walked)} is not a "
                "table; fix it by hand first"
            )
    if table.get("mirrors") or table.get("configs"):
        raise ConfigError(
            "it still uses the deprecated registry.mirrors/configs, which containerd "
            "refuses beside config_path; move them to hosts.toml files under "
            f"{CONTAINERD_CERTS}, then run trust-clients again"
        )
    configured = str(table.get("config_path", "") or "")
    if CONTAINERD_CERTS in configured.split(":"):
        return Edit(None)
    if configured:
        return Edit(
            None,
            f"its config_path is {configured!r}, so it does not read {CONTAINERD_CERTS}"
            "; add that folder to config_path",
        )
    table["config_path"] = CONTAINERD_CERTS
    return Edit(tomlkit.dumps(document))


def _parse_toml(text: str) -> Any:
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"not valid TOML ({exc}); fix it by hand first") from None


def _is_table(value: object) -> bool:
    return isinstance(value, dict)


def _shown(value: object) -> str:
    text = repr(value.unwrap() if hasattr(value, "unwrap") else value)
    return text if len(text) <= 40 else text[:40] + "..."


# BuildKit's buildkitd.toml --------------------------------------------------------


def buildkit_config(current: str | None, authority: str, remove: bool = False) -> Edit:
    """Add (or remove) our CA in ``[registry."ADDRESS:PORT"] ca``."""
    document = _parse_toml(current or "")
    path = ca_file("buildkit", authority)
    registries: Any = document.get("registry")
    if registries is not None and not _is_table(registries):
        raise ConfigError("its registry is not a table; fix it by hand first")
    entry: Any = registries.get(authority) if registries is not None else None
    if entry is not None and not _is_table(entry):
        raise ConfigError(
            f'its registry."{authority}" is not a table; fix it by hand first'
        )
    found = entry.get("ca", []) if entry is not None else []
    # buildkitd accepts one path as well as a list of them.
    if isinstance(found, str):
        found = [found]
    if not isinstance(found, list):
        raise ConfigError(
            f'its registry."{authority}".ca is neither a path nor a list of paths; '
            "fix it by hand first"
        )
    cas = [str(item) for item in found]
    if remove:
        if path not in cas:
            return Edit(None)
        entry["ca"] = [item for item in cas if item != path]
        if not entry["ca"]:
            del entry["ca"]
        if not entry:
            del registries[authority]
        if not registries:
            del document["registry"]
        return Edit(tomlkit.dumps(document))
    if path in cas:
        return Edit(None)
    if registries is None:
        registries = tomlkit.table(is_super_table=True)
        document["registry"] = registries
    if entry is None:
        entry = tomlkit.table()
        registries[authority] = entry
    entry["ca"] = [*cas, path]
    return Edit(tomlkit.dumps(document))


# k3s / rke2 registries.yaml --------------------------------------------------------


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _load_yaml(current: str | None) -> Any:
    try:
        document = _yaml().load(current or "") if current and current.strip() else None
    except YAMLError as exc:
        problem = " ".join(str(exc).split())  # one line, whatever the parser says
        raise ConfigError(f"not valid YAML ({problem}); fix it by hand first") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError("its top level is not a mapping; fix it by hand first")
    return document


def _dump_yaml(document: Any) -> str:
    stream = io.StringIO()
    _yaml().dump(document, stream)
    return stream.getvalue()


def _mapping(parent: Any, key: str, where: str) -> Any:
    value = parent.get(key)
    if value is None:
        parent[key] = {}
        return parent[key]
    if not isinstance(value, dict):
        raise ConfigError(f"{where} is not a mapping; fix it by hand first")
    return value


def registries_yaml(
    current: str | None, runtime: str, authority: str, remove: bool = False
) -> Edit:
    """Merge (or remove) the registry in k3s/rke2 ``registries.yaml``.

    The key is exactly ``ADDRESS:PORT``; every other mirror and config is kept, with
    its comments. The mirror entry makes k3s write the registry's hosts.toml.
    """
    document = _load_yaml(current)
    ca_path = ca_file(runtime, authority)
    endpoint = f"https://{authority}"
    before = _dump_yaml(document) if document else ""
    if remove:
        return _remove_registry(document, authority, ca_path, endpoint, before)

    mirrors = _mapping(document, "mirrors", "mirrors")
    mirror = _mapping(mirrors, authority, f"mirrors.{authority}")
    endpoints = mirror.get("endpoint")
    if endpoints is None:
        mirror["endpoint"] = [endpoint]
    elif not isinstance(endpoints, list):
        raise ConfigError(f"mirrors.{authority}.endpoint is not a list")
    elif endpoint not in endpoints:
        endpoints.append(endpoint)
    configs = _mapping(document, "configs", "configs")
    config = _mapping(configs, authority, f"configs.{authority}")
    tls = _mapping(config, "tls", f"configs.{authority}.tls")
    tls["ca_file"] = ca_path
    after = _dump_yaml(document)
    return Edit(None if after == before else after)


def _remove_registry(
    document: Any, authority: str, ca_path: str, endpoint: str, before: str
) -> Edit:
    configs = document.get("configs")
    config = configs.get(authority) if isinstance(configs, dict) else None
    tls = config.get("tls") if isinstance(config, dict) else None
    if isinstance(tls, dict) and tls.get("ca_file") == ca_path:
        del tls["ca_file"]
        _prune(config, "tls")
        _prune(configs, authority)
        _prune(document, "configs")
    mirrors = document.get("mirrors")
    mirror = mirrors.get(authority) if isinstance(mirrors, dict) else None
    if isinstance(mirror, dict) and list(mirror.get("endpoint") or []) == [endpoint]:
        del mirror["endpoint"]
        _prune(mirrors, authority)
        _prune(document, "mirrors")
    after = _dump_yaml(document) if document else ""
    return Edit(None if after == before else after)


def _prune(parent: Any, key: str) -> None:
    if isinstance(parent, dict) and parent.get(key) == {}:
        del parent[key]


def config_file(runtime: str) -> str | None:
    """The config file ``runtime`` reads its registry settings from, if any."""
    if runtime == "containerd":
        return CONTAINERD_CONFIG
    if runtime == "buildkit":
        return BUILDKIT_CONFIG
    if runtime in RANCHER:
        return f"{RANCHER[runtime]}/registries.yaml"
    return None


def edit_config(
    runtime: str, current: str | None, authority: str, major: int, remove: bool
) -> Edit:
    """The new text of ``runtime``'s config file for the registry at ``authority``."""
    if runtime == "containerd":
        # config_path serves every registry; untrusting one leaves it in place.
        return Edit(None) if remove else containerd_config(current, major)
    if runtime == "buildkit":
        return buildkit_config(current, authority, remove)
    if runtime in RANCHER:
        return registries_yaml(current, runtime, authority, remove)
    return Edit(None)
