"""Registry addresses as clients write them, and SSH targets as users write them."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import InputError

DEFAULT_REGISTRY_PORT = 5000
DEFAULT_SSH_PORT = 22

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE | re.ASCII)
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?", re.IGNORECASE | re.ASCII)


def _shown(value: object) -> str:
    """A value quoted in a message, cut short: errors stay one readable line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return ``text`` as an IP address, or None when it is not one.

    Zoned IPv6 addresses (``fe80::1%eth0``) are not addresses a certificate or
    another host can use, so they are not accepted.
    """
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return None
    return ip


#: Address blocks reserved for documentation (RFC 5737, RFC 3849): never real hosts.
DOCUMENTATION_NETWORKS = tuple(
    ipaddress.ip_network(block)
    for block in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)


def refuse_example_address(host: str, where: str) -> None:
    """Stop before connecting to an address copied from an example."""
    ip = parse_ip(host)
    if ip is not None and any(ip in network for network in DOCUMENTATION_NETWORKS):
        raise InputError(
            f"{where}: {host} is a documentation example address, not a real host; "
            "put your own server's address there"
        )


def is_host_name(text: str) -> bool:
    """Tell whether ``text`` is a valid DNS host name (RFC 1123 labels)."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253 or name.replace(".", "").isdigit():
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def check_address(text: object, where: str) -> str:
    """Validate one registry address (an IP or a host name) and return it normalised.

    ``where`` names the option or inventory key, for the error message.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError(
            f"{where}: expected an IP address or a host name, got {_shown(text)}"
        )
    text = text.strip()
    if "%" in text:
        raise InputError(
            f"{where}: {_shown(text)} has a zone (%...); give an address that other "
            "hosts can reach"
        )
    if "://" in text or "/" in text:
        bare = text.split("://", 1)[-1].split("/", 1)[0]
        raise InputError(
            f"{where}: {_shown(text)} has a scheme or a path; give the bare address, "
            f"for example {_shown(bare)}"
        )
    ip = parse_ip(text)
    if ip is not None:
        return ip.compressed
    if text.count(":") == 1 and text.rsplit(":", 1)[1].isdigit():
        host, port = text.rsplit(":", 1)
        raise InputError(
            f"{where}: {_shown(text)} includes a port; give the address "
            f"{_shown(host)} and the port {port} separately"
        )
    if not is_host_name(text):
        raise InputError(
            f"{where}: {_shown(text)} is neither an IP address nor a valid host name"
        )
    return text.lower().rstrip(".")


def check_port(value: object, where: str) -> int:
    """Validate a TCP port number."""
    text = str(value).strip()
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, str))
        or not (text.isascii() and text.isdigit() and len(text) <= 5)
    ):
        raise InputError(
            f"{where}: expected a port number 1-65535, got {_shown(value)}"
        )
    port = int(text)
    if not 1 <= port <= 65535:
        raise InputError(f"{where}: port {port} is out of range; use 1-65535")
    return port


def registry_authority(address: str, port: int) -> str:
    """Return ``ADDRESS:PORT`` exactly as clients write it in image names.

    IPv6 addresses are bracketed, as in ``[2001:db8::5]:5000``. The port is always
    included, even 443, because the folder names of every runtime must match the image
    reference the user types, and we always tell users to type the port.
    """
    ip = parse_ip(address)
    host = f"[{ip.compressed}]" if ip is not None and ip.version == 6 else address
    return f"{host}:{port}"


def split_authority(text: str, where: str) -> tuple[str, int]:
    """Parse ``ADDRESS[:PORT]`` (IPv6 bracketed when a port follows)."""
    text = text.strip()
    if "://" in text or "/" in text:
        check_address(text, where)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = check_port(rest[1:], where) if rest.startswith(":") else None
        if rest and port is None:
            raise InputError(
                f"{where}: cannot read {_shown(text)}; write [ADDRESS]:PORT"
            )
        return check_address(host, where), port or DEFAULT_REGISTRY_PORT
    if text.count(":") == 1:
        host, port_text = text.split(":")
        return check_address(host, where), check_port(port_text, where)
    return check_address(text, where), DEFAULT_REGISTRY_PORT


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to open an SSH connection."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host and self.port else self.host
        port = f":{self.port}" if self.port else ""
        return f"{user}{host}{port}"


def parse_ssh_target(text: object, where: str) -> SshTarget:
    """Parse ``[user@]host[:port]`` as Fabric's ``-H`` accepts it."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: expected [user@]host[:port], got {_shown(text)}")
    text = text.strip()
    user, _, hostport = text.rpartition("@")
    if user and not _USER.fullmatch(user):
        raise InputError(
            f"{where}: {_shown(user)} in {_shown(text)} is not a valid user name"
        )
    port: int | None = None
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise InputError(
                    f"{where}: cannot read {_shown(text)}; write user@[ADDRESS]:PORT"
                )
            port = check_port(rest[1:], where)
    elif hostport.count(":") == 1:
        host, port_text = hostport.split(":")
        port = check_port(port_text, where)
    else:
        host = hostport
    if parse_ip(host) is None and not is_host_name(host):
        raise InputError(
            f"{where}: {_shown(host)} in {_shown(text)} is not an IP address or host "
            "name"
        )
    return SshTarget(host=host, user=user or None, port=port)


#: What clients of an IPv6 registry meet, as measured in the lab (Debian 12).
IPV6_NAMES_NOTE = (
    "note: images on {authority} are named with an IPv6 address; containerd (so "
    "Kubernetes) pulls them, but docker, podman and skopeo releases older than their "
    "IPv6-aware reference parser (Debian 12's among them) refuse such names with "
    "'invalid reference format': fab check-clients tells which clients can"
)


def ipv6_names_note(address: str, authority: str) -> str | None:
    """A warning for registries that clients must name by an IPv6 address."""
    ip = parse_ip(address)
    if ip is None or ip.version != 6:
        return None
    return IPV6_NAMES_NOTE.format(authority=authority)
