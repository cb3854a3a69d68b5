"""The inventory file: which registry, which clients, and how to trust it on each.

Loaded and validated once, before any connection opens. Every error names the file, the
entry and the key, and says how to fix it.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .addresses import (
    SshTarget,
    check_address,
    check_port,
    parse_ip,
    parse_ssh_target,
)
from .errors import InputError
from .localfiles import check_regular_file
from .runtimes import RUNTIMES

DEFAULT_INVENTORY = "inventory.yaml"
DEFAULT_IMAGE = "registry:2"
DEFAULT_DATA = "registry-data"
DEFAULT_REMOTE_DIR = "/opt/registry"
DEFAULT_CONTAINER = "registry"

AUTO = "auto"

REGISTRY_KEYS = (
    "address",
    "port",
    "extra_addresses",
    "ssh",
    "image",
    "data",
    "remote_dir",
    "container",
)
CLIENT_KEYS = ("host", "runtimes", "rootless_users")
TOP_KEYS = ("registry", "clients", "runtimes", "rootless_users")

#: A login name as useradd accepts it on the common distributions.
USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


@dataclass(frozen=True)
class RegistrySettings:
    """The registry as the inventory describes it; None means "not set here"."""

    address: str | None = None
    port: int | None = None
    extra_addresses: tuple[str, ...] = ()
    ssh: SshTarget | None = None
    image: str | None = None
    data: str | None = None
    remote_dir: str | None = None
    container: str | None = None


@dataclass(frozen=True)
class Client:
    """One machine that must trust the registry."""

    target: SshTarget
    runtimes: tuple[str, ...] = (AUTO,)
    #: Users whose rootless Docker gets the CA in ~/.config/docker/certs.d.
    rootless_users: tuple[str, ...] = ()


@dataclass(frozen=True)
class Inventory:
    """A validated inventory file."""

    path: Path | None
    registry: RegistrySettings
    clients: tuple[Client, ...]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping with the same key twice.

    PyYAML keeps the last value silently, which hides typos such as two ``port`` lines.
    """


def _construct_unique_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # construct_mapping refuses it, with its line
        if key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice (line {line})",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


#: Far more than any fleet's inventory; a larger file is not one.
MAX_INVENTORY_BYTES = 4 * 1024 * 1024


def load_inventory(path: Path) -> Inventory:
    """Read and validate the inventory at ``path``."""
    try:
        if not path.is_dir():
            check_regular_file(path, "inventory", MAX_INVENTORY_BYTES)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            f"{path}: no such inventory file; create it (see inventory.yaml in the "
            "project for an example) or pass --inventory PATH"
        ) from None
    except IsADirectoryError:
        raise InputError(
            f"{path}: is a folder; pass the inventory file itself"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise InputError(f"{path}: cannot read the inventory: {reason}") from None
    return parse_inventory(text, path)


def parse_inventory(text: str, path: Path | None = None) -> Inventory:
    """Validate inventory YAML ``text``; ``path`` only names the file in errors."""
    name = str(path or DEFAULT_INVENTORY)
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(
            f"{name}: not valid YAML{where}: {problem}; fix the syntax"
        ) from None
    except yaml.YAMLError as exc:
        raise InputError(f"{name}: not valid YAML: {exc}; fix the syntax") from None
    except RecursionError:
        raise InputError(f"{name}: nested too deeply to be an inventory") from None
    if document is None:
        raise InputError(
            f"{name}: the file is empty; it needs a 'registry' and 'clients'"
        )
    if not isinstance(document, dict):
        raise InputError(
            f"{name}: the top level must be a mapping with 'registry' and 'clients', "
            f"not a {_type_name(document)}"
        )
    _check_keys(document, TOP_KEYS, name, "")

    default_runtimes = _runtimes(document.get("runtimes", [AUTO]), name, "runtimes")
    default_users = check_user_names(
        document.get("rootless_users", []), f"{name}: rootless_users"
    )
    registry = _registry(document.get("registry", {}), name)
    clients = _clients(document.get("clients"), default_runtimes, default_users, name)
    return Inventory(path=path, registry=registry, clients=clients)


def _registry(section: object, name: str) -> RegistrySettings:
    if not isinstance(section, dict):
        raise InputError(
            f"{name}: 'registry' must be a mapping with at least 'address', "
            f"not a {_type_name(section)}"
        )
    _check_keys(section, REGISTRY_KEYS, name, "registry.")

    def key(k: str) -> str:
        return f"{name}: registry.{k}"

    extras = section.get("extra_addresses", [])
    if isinstance(extras, str):
        extras = [extras]
    if not isinstance(extras, list):
        raise InputError(f"{key('extra_addresses')}: expected a list of addresses")
    return RegistrySettings(
        address=_optional(
            section, "address", lambda v: check_address(v, key("address"))
        ),
        port=_optional(section, "port", lambda v: check_port(v, key("port"))),
        extra_addresses=tuple(
            check_address(item, f"{key('extra_addresses')}[{index}]")
            for index, item in enumerate(extras)
        ),
        ssh=_optional(section, "ssh", lambda v: parse_ssh_target(v, key("ssh"))),
        image=_optional(section, "image", lambda v: check_image(v, key("image"))),
        data=_optional(section, "data", lambda v: check_data(v, key("data"))),
        remote_dir=_optional(
            section, "remote_dir", lambda v: check_remote_dir(v, key("remote_dir"))
        ),
        container=_optional(
            section, "container", lambda v: check_container_name(v, key("container"))
        ),
    )


def _clients(
    section: object,
    default_runtimes: tuple[str, ...],
    default_users: tuple[str, ...],
    name: str,
) -> tuple[Client, ...]:
    if section is None:
        return ()
    if not isinstance(section, list):
        raise InputError(
            f"{name}: 'clients' must be a list of hosts ([user@]host[:port]), "
            f"not a {_type_name(section)}"
        )
    if not section:
        raise InputError(
            f"{name}: 'clients' is an empty list; add at least one host or remove "
            "the key"
        )
    clients: list[Client] = []
    seen: dict[tuple[str, int | None], int] = {}
    for index, entry in enumerate(section):
        where = f"{name}: clients[{index}]"
        if isinstance(entry, dict):
            _check_keys(entry, CLIENT_KEYS, name, f"clients[{index}].")
            if "host" not in entry:
                raise InputError(f"{where}: missing 'host' ([user@]host[:port])")
            target = parse_ssh_target(entry["host"], f"{where}.host")
            runtimes = _runtimes(
                entry.get("runtimes", list(default_runtimes)),
                name,
                f"clients[{index}].runtimes",
            )
            users = (
                check_user_names(entry["rootless_users"], f"{where}.rootless_users")
                if "rootless_users" in entry
                else default_users
            )
        else:
            target = parse_ssh_target(entry, where)
            runtimes = default_runtimes
            users = default_users
        identity = (host_identity(target.host), target.port or 22)
        if identity in seen:
            raise InputError(
                f"{where}: {target} is listed twice (also clients[{seen[identity]}]); "
                "keep one entry"
            )
        seen[identity] = index
        clients.append(Client(target, runtimes, users))
    return tuple(clients)


def host_identity(host: str) -> str:
    """One spelling per host: IPv6 compressed, names in lower case."""
    ip = parse_ip(host)
    return str(ip) if ip is not None else host.lower()


def check_user_names(value: object, where: str) -> tuple[str, ...]:
    """Validate a list of login names (of rootless Docker users)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InputError(
            f"{where}: expected a list of user names, not a {_type_name(value)}"
        )
    users: list[str] = []
    for item in value:
        if not isinstance(item, str) or not USER_NAME.fullmatch(item):
            raise InputError(
                f"{where}: {_shorten(repr(item))} is not a user name; use lowercase "
                "letters, digits, '_', '.' and '-', starting with a letter or '_'"
            )
        if item == "root":
            raise InputError(
                f"{where}: root runs the system Docker, not a rootless one; remove "
                "root and use the docker runtime"
            )
        if item not in users:
            users.append(item)
    return tuple(users)


def _runtimes(value: object, name: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    known = (AUTO, *RUNTIMES)
    if not isinstance(value, list) or not value:
        raise InputError(
            f"{name}: {key}: expected a list of runtimes from {', '.join(known)}"
        )
    runtimes: list[str] = []
    for item in value:
        if item not in known:
            hint = _closest(str(item), known)
            raise InputError(
                f"{name}: {key}: unknown runtime {item!r}{hint}; "
                f"known: {', '.join(known)}"
            )
        if item not in runtimes:
            runtimes.append(item)
    if AUTO in runtimes and len(runtimes) > 1:
        raise InputError(
            f"{name}: {key}: 'auto' detects runtimes itself; list either 'auto' or "
            "runtimes"
        )
    return tuple(runtimes)


def check_data(value: object, where: str) -> str:
    """Validate the data location: a named volume or an absolute path on the host."""
    text = _text(value, where)
    if text.startswith("/"):
        return check_remote_dir(text, where)
    if not all(c.isalnum() or c in "_.-" for c in text) or not text[0].isalnum():
        raise InputError(
            f"{where}: {text!r} is neither a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*) "
            "nor an absolute path on the registry host"
        )
    return text


#: Folders a tool must never take over (or, with teardown --purge-data, delete).
SYSTEM_FOLDERS = frozenset(
    {
        "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64",
        "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys",
        "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/usr/sbin", "/var",
        "/var/lib", "/var/log", "/var/run", "/var/tmp", "/var/lib/docker",
    }
)  # fmt: skip


#: Trees of the system and of other programs: neither they nor anything inside them
#: is ours to take over (or, with teardown --purge-data, to delete).
SYSTEM_TREES = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
    "/run", "/sbin", "/sys", "/usr", "/var/run", "/var/lock", "/var/cache",
    "/var/log", "/var/mail", "/var/spool", "/var/backups",
    "/var/lib/apt", "/var/lib/dpkg", "/var/lib/docker", "/var/lib/containerd",
    "/var/lib/containers", "/var/lib/kubelet", "/var/lib/rancher", "/var/lib/systemd",
    "/root/.ssh", "/root/.docker", "/root/.config",
)  # fmt: skip
#: Folders whose every child belongs to someone else: /home/alice is alice's.
OTHERS_CHILDREN = ("/home",)


def is_system_folder(path: str) -> bool:
    """Tell whether a normalised absolute ``path`` is, or lies in, a system folder."""
    parent = posixpath.dirname(path)
    return (
        path in SYSTEM_FOLDERS
        or parent in OTHERS_CHILDREN
        or any(path == tree or path.startswith(tree + "/") for tree in SYSTEM_TREES)
    )


# Image references, after distribution's grammar: [DOMAIN[:PORT]/]PATH[:TAG][@DIGEST].
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)


def check_image(value: object, where: str) -> str:
    """An image reference docker accepts: registry:2, mirror:5000/registry:2..."""
    text = _text(value, where)
    if len(text) > 255 or not IMAGE.fullmatch(text):
        raise InputError(
            f"{where}: {_shorten(text)!r} is not an image reference; write "
            "[REGISTRY/]NAME[:TAG] in lower case, such as registry:2"
        )
    return text


def check_container_name(value: object, where: str) -> str:
    """A name docker accepts for a container."""
    text = _text(value, where)
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}", text):
        raise InputError(
            f"{where}: {_shorten(text)!r} is not a container name; use letters, "
            "digits, '_', '.' and '-', starting with a letter or digit"
        )
    return text


def check_remote_dir(value: object, where: str) -> str:
    """Validate an absolute folder path on a remote host, one of its own."""
    text = _text(value, where)
    if not text.startswith("/") or any(c in text for c in "\n\0'\"$`\\ |:;&<>*?"):
        raise InputError(
            f"{where}: {_shorten(text)!r} must be an absolute path without spaces, "
            "quotes or shell characters"
        )
    if ".." in text.split("/"):
        raise InputError(f"{where}: {_shorten(text)!r} has '..'; write the plain path")
    normal = "/" + str(posixpath.normpath(text)).lstrip("/")  # POSIX keeps '//'
    if is_system_folder(normal):
        raise InputError(
            f"{where}: {text!r} is a system folder or inside one; pick a folder of "
            "its own, such as /opt/registry"
        )
    return normal


def _shorten(text: str, length: int = 60) -> str:
    """A value fit to quote in a one-line message."""
    return text if len(text) <= length else text[:length] + "..."


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(
            f"{where}: expected a non-empty string, got {_shorten(repr(value))}"
        )
    return value.strip()


def _optional(section: Mapping[str, object], key: str, check: Any) -> Any:
    value = section.get(key)
    return None if value is None else check(value)


def _check_keys(
    section: Mapping[Any, object], known: Sequence[str], name: str, prefix: str
) -> None:
    for key in section:
        if key not in known:
            hint = _closest(str(key), known)
            shown = key if isinstance(key, str) and key.isprintable() else repr(key)
            raise InputError(
                f"{name}: unknown key {prefix}{_shorten(str(shown))}{hint}; "
                "known keys: "
                f"{', '.join(prefix + k for k in known)}"
            )


def _closest(word: str, choices: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _type_name(value: object) -> str:
    return {
        list: "list",
        str: "string",
        int: "number",
        float: "number",
        bool: "boolean",
    }.get(type(value), type(value).__name__)
