"""The lab's network: one bridge in the root namespace, one netns and veth per host.

Hosts get no default route, so nothing started inside them can reach beyond the
lab subnet, whatever it tries.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .commands import run_local
from .errors import LabError

NETNS_DIR = Path("/run/netns")
DEFAULT_SUBNET = "10.231.0"
DEFAULT_PREFIX = "reglab"


def parse_subnet(text: str) -> str:
    """Accept "10.231.0" or "10.231.0.0/24" and return the first three octets."""
    parts = text.strip().removesuffix("/24").split(".")
    if len(parts) == 4 and parts[3] == "0":
        parts = parts[:3]
    cleaned = ".".join(parts)
    if len(parts) != 3 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise LabError(
            f"LAB_SUBNET={text!r} is not a /24 prefix; give three octets such as "
            f"{DEFAULT_SUBNET!r}"
        )
    network = ipaddress.ip_network(f"{cleaned}.0/24")
    if not network.is_private or network.is_loopback:
        raise LabError(
            f"LAB_SUBNET={text!r} is not a private range; lab traffic must stay "
            "on addresses nobody else uses (try 10.231.0)"
        )
    return cleaned


@dataclass(frozen=True)
class Naming:
    """Kernel object names derived from one prefix, so leftovers can be found."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        # Interface names stop at 15 bytes: prefix + "v" + up to 3 digits.
        if not re.fullmatch(r"[a-z][a-z0-9]{0,9}", self.prefix):
            raise LabError(
                f"lab prefix {self.prefix!r} must be 1-10 lowercase letters or "
                "digits, starting with a letter"
            )

    @property
    def bridge(self) -> str:
        return f"{self.prefix}0"

    def netns(self, host_name: str) -> str:
        return f"{self.prefix}-{host_name}"

    def veth(self, index: int) -> str:
        return f"{self.prefix}v{index}"

    @property
    def cgroup_prefix(self) -> str:
        return f"{self.prefix}-"

    def cgroup(self, host_name: str) -> str:
        return f"{self.prefix}-{host_name}"


def _ip(*args: str, check: bool = True) -> str:
    return run_local(["ip", *args], check=check).stdout


def ipv6_address(ipv4: str) -> str:
    """The lab address's IPv6 twin: 10.231.1.2 is fd0a:e701::2.

    A unique local address (fd00::/8) made from the IPv4 one, so two labs on
    different subnets never share a /64.
    """
    a, b, c, d = (int(part) for part in ipv4.split("."))
    return f"fd{a:02x}:{b:02x}{c:02x}::{d:x}"


def _quiet_ipv6(interface: str, netns: str | None = None) -> None:
    # IPv6 on, but no router solicitations, no autoconfiguration and no DAD wait:
    # the lab's static addresses work at once and nothing else is said on the link.
    prefix = [] if netns is None else ["nsenter", f"--net={NETNS_DIR / netns}", "--"]
    settings = [
        f"net.ipv6.conf.{interface}.{key}={value}"
        for key, value in (
            ("disable_ipv6", 0),
            ("accept_ra", 0),
            ("autoconf", 0),
            ("accept_dad", 0),
            ("router_solicitations", 0),
        )
    ]
    run_local([*prefix, "sysctl", "-qw", *settings], check=False)


def create_bridge(naming: Naming, subnet: str) -> None:
    _ip("link", "add", naming.bridge, "type", "bridge")
    _quiet_ipv6(naming.bridge)
    _ip("addr", "add", f"{subnet}.1/24", "dev", naming.bridge)
    _ip("addr", "add", f"{ipv6_address(subnet + '.1')}/64", "dev", naming.bridge,
        "nodad")  # fmt: skip
    _ip("link", "set", naming.bridge, "up")


def create_host_network(
    naming: Naming, index: int, host_name: str, address: str
) -> None:
    """Create the host's netns and wire its eth0 to the bridge."""
    netns, veth = naming.netns(host_name), naming.veth(index)
    _ip("netns", "add", netns)
    _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    # The bridge port itself needs no address of its own.
    run_local(["sysctl", "-qw", f"net.ipv6.conf.{veth}.disable_ipv6=1"], check=False)
    _ip("link", "set", veth, "master", naming.bridge, "up")
    _quiet_ipv6("eth0", netns)
    _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
    _ip("-n", netns, "addr", "add", f"{ipv6_address(address)}/64", "dev", "eth0",
        "nodad")  # fmt: skip
    _ip("-n", netns, "link", "set", "eth0", "up")
    _ip("-n", netns, "link", "set", "lo", "up")


def lab_namespaces(naming: Naming) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(
        entry.name
        for entry in NETNS_DIR.iterdir()
        if entry.name.startswith(f"{naming.prefix}-")
    )


def delete_namespace(netns: str) -> None:
    _ip("netns", "delete", netns, check=False)


def delete_links(naming: Naming) -> None:
    """Delete leftover veths and the bridge (a veth usually dies with its netns)."""
    veth_name = re.compile(rf"{re.escape(naming.prefix)}v\d+")
    for line in _ip("-o", "link", "show").splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        if veth_name.fullmatch(name) or name == naming.bridge:
            _ip("link", "delete", name, check=False)


def _forward_rules(naming: Naming) -> list[list[str]]:
    tag = ["-m", "comment", "--comment", f"{naming.prefix} lab bridge"]
    return [
        ["FORWARD", "-i", naming.bridge, *tag, "-j", "ACCEPT"],
        ["FORWARD", "-o", naming.bridge, *tag, "-j", "ACCEPT"],
    ]


def allow_bridge_forwarding(naming: Naming) -> None:
    """Let bridged traffic between hosts through the root FORWARD chain.

    With br_netfilter loaded, frames between two veths on the bridge traverse
    FORWARD, and a Docker in the root namespace would have set its policy to DROP.
    """
    if shutil.which("iptables") is None:
        return
    for rule in _forward_rules(naming):
        present = run_local(["iptables", "-w", "-C", *rule], check=False)
        if present.returncode != 0:
            run_local(["iptables", "-w", "-I", *rule])


def remove_bridge_forwarding(naming: Naming) -> None:
    if shutil.which("iptables") is None:
        return
    for rule in _forward_rules(naming):
        # Delete every copy: a crashed run may have inserted one twice.
        while run_local(["iptables", "-w", "-D", *rule], check=False).returncode == 0:
            pass
