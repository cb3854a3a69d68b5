"""Addresses as clients write them in image names, and SSH targets as -H takes them."""

from __future__ import annotations

import pytest

from tasks.addresses import (
    SshTarget,
    check_address,
    check_port,
    parse_ssh_target,
    refuse_example_address,
    registry_authority,
    split_authority,
)
from tasks.errors import InputError


@pytest.mark.parametrize(
    ("address", "port", "authority"),
    [
        ("203.0.113.7", 5000, "203.0.113.7:5000"),
        ("203.0.113.7", 443, "203.0.113.7:443"),
        ("2001:db8::5", 5000, "[2001:db8::5]:5000"),
        ("registry.example", 8443, "registry.example:8443"),
    ],
)
def test_registry_authority(address: str, port: int, authority: str) -> None:
    assert registry_authority(address, port) == authority


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("203.0.113.7", ("203.0.113.7", 5000)),
        ("203.0.113.7:5001", ("203.0.113.7", 5001)),
        ("[2001:db8::5]:5000", ("2001:db8::5", 5000)),
        ("2001:db8::5", ("2001:db8::5", 5000)),
        ("[2001:db8::5]", ("2001:db8::5", 5000)),
        ("Registry.Example", ("registry.example", 5000)),
    ],
)
def test_split_authority(text: str, parsed: tuple[str, int]) -> None:
    assert split_authority(text, "--registry") == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("https://203.0.113.7:5000", "scheme or a path"),
        ("203.0.113.7:5000/v2/", "scheme or a path"),
        ("203.0.113.7:0", "out of range"),
        ("[2001:db8::5]x", "cannot read"),
        ("bad_name:5000", "neither an IP address"),
    ],
)
def test_split_authority_errors(text: str, message: str) -> None:
    with pytest.raises(InputError, match="--registry"):
        split_authority(text, "--registry")
    with pytest.raises(InputError, match=message):
        split_authority(text, "--registry")


def test_address_normalisation() -> None:
    assert check_address("2001:0DB8:0::5", "x") == "2001:db8::5"
    assert check_address("Host.Example.", "x") == "host.example"


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("203.0.113.21", SshTarget("203.0.113.21")),
        ("deploy@203.0.113.22:2222", SshTarget("203.0.113.22", "deploy", 2222)),
        ("root@[2001:db8::1]:22", SshTarget("2001:db8::1", "root", 22)),
        ("2001:db8::1", SshTarget("2001:db8::1")),
        ("node-1", SshTarget("node-1")),
    ],
)
def test_parse_ssh_target(text: str, target: SshTarget) -> None:
    assert parse_ssh_target(text, "-H") == target


def test_ssh_target_prints_as_written() -> None:
    assert str(SshTarget("203.0.113.22", "deploy", 2222)) == "deploy@203.0.113.22:2222"
    assert str(SshTarget("2001:db8::1", "root", 22)) == "root@[2001:db8::1]:22"


@pytest.mark.parametrize(
    "host", ["203.0.113.10", "192.0.2.1", "198.51.100.7", "2001:db8::1"]
)
def test_example_addresses_are_refused_before_connecting(host: str) -> None:
    with pytest.raises(InputError, match="documentation example address"):
        refuse_example_address(host, "-H")


@pytest.mark.parametrize(
    "host", ["10.0.0.5", "8.8.8.8", "node1.example", "2001:db9::1"]
)
def test_real_addresses_pass(host: str) -> None:
    refuse_example_address(host, "-H")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fe80::1%eth0", "has a zone"),
        ("reg\n.example", "neither an IP address"),
        ("\u212aelvin.example", "neither an IP address"),  # a Kelvin sign, not a K
        ("a" * 5000, "neither an IP address"),
    ],
)
def test_addresses_that_only_look_valid(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        check_address(text, "registry.address")
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize("port", ["\uff15\uff10\uff10\uff10", "5_000", "1" * 5000, 5.0])
def test_ports_that_python_would_accept(port: object) -> None:
    with pytest.raises(InputError, match="expected a port number"):
        check_port(port, "--port")


def test_user_names_with_newlines_are_refused() -> None:
    with pytest.raises(InputError, match="not a valid user name"):
        parse_ssh_target("root\n@203.0.113.5", "-H")
