"""The inventory loader: valid documents load, every bad one gets our one-line error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.addresses import SshTarget
from tasks.errors import InputError
from tasks.inventory import AUTO, Client, load_inventory, parse_inventory

PROJECT = Path(__file__).resolve().parent.parent


def test_minimum_schema() -> None:
    book = parse_inventory(
        "registry:\n  address: 203.0.113.10\n  port: 5000\n"
        "clients:\n  - 203.0.113.21\n  - deploy@203.0.113.22:2222\n"
    )
    assert book.registry.address == "203.0.113.10"
    assert book.registry.port == 5000
    assert book.clients == (
        Client(SshTarget("203.0.113.21"), (AUTO,)),
        Client(SshTarget("203.0.113.22", "deploy", 2222), (AUTO,)),
    )


def test_the_shipped_example_loads() -> None:
    book = load_inventory(PROJECT / "inventory.yaml")
    assert book.registry.address == "203.0.113.10"
    assert len(book.clients) == 3
    assert book.clients[2].runtimes == ("docker",)


def test_client_mapping_with_runtimes_and_global_default() -> None:
    book = parse_inventory(
        "registry: {address: 203.0.113.10}\nruntimes: [podman]\n"
        "clients:\n  - 203.0.113.21\n  - {host: 203.0.113.22, runtimes: [docker]}\n"
    )
    assert book.clients[0].runtimes == ("podman",)
    assert book.clients[1].runtimes == ("docker",)


def test_ipv6_and_names() -> None:
    book = parse_inventory(
        "registry:\n  address: '2001:DB8::5'\n  extra_addresses: [Registry.Example.]\n"
        "clients: ['root@[2001:db8::21]:22', node1.example]\n"
    )
    assert book.registry.address == "2001:db8::5"
    assert book.registry.extra_addresses == ("registry.example",)
    assert book.clients[0].target == SshTarget("2001:db8::21", "root", 22)
    assert book.clients[1].target == SshTarget("node1.example")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("registry: [\n", "not valid YAML at line 2"),
        ("registry:\n  adress: 203.0.113.10\n", "unknown key registry.adress (did you mean 'address'?)"),
        ("registy: {address: 203.0.113.10}\n", "did you mean 'registry'"),
        ("registry: {address: 203.0.113.10, port: 0}\n", "port 0 is out of range"),
        ("registry: {address: 203.0.113.10, port: 70000}\n", "out of range"),
        ("registry: {address: 203.0.113.10, port: five}\n", "expected a port number"),
        ("registry: {address: 'https://203.0.113.10'}\n", "has a scheme or a path; give the bare address, for example '203.0.113.10'"),
        ("registry: {address: '203.0.113.10/v2/'}\n", "has a scheme or a path"),
        ("registry: {address: '203.0.113.10:5000'}\n", "includes a port"),
        ("registry: {address: 'not an address!'}\n", "neither an IP address nor a valid host name"),
        ("registry: {address: 999.1.1.1}\n", "neither an IP address nor a valid host name"),
        ("registry: {address: 203.0.113.10}\nclients: []\n", "'clients' is an empty list"),
        ("registry: {address: 203.0.113.10}\nclients: 203.0.113.2\n", "'clients' must be a list"),
        ("registry: {address: 203.0.113.10}\nclients: [a.example, a.example]\n", "clients[1]: a.example is listed twice (also clients[0])"),
        ("registry: {address: 203.0.113.10}\nclients: [{runtimes: [docker]}]\n", "missing 'host'"),
        ("registry: {address: 203.0.113.10}\nclients: [{host: a.example, runtimes: [dokker]}]\n", "unknown runtime 'dokker' (did you mean 'docker'?)"),
        ("registry: {address: 203.0.113.10}\nruntimes: [auto, docker]\n", "list either 'auto' or runtimes"),
        ("registry: {address: 203.0.113.10}\nclients: ['root@:22']\n", "is not an IP address or host name"),
        ("registry: {address: 203.0.113.10}\nclients: ['a.example:99999']\n", "out of range"),
        ("registry:\n  address: 203.0.113.10\n  address: 203.0.113.11\n", "key 'address' appears twice"),
        ("registry: {address: 203.0.113.10, data: 'my data'}\n", "neither a volume name"),
        ("registry: {address: 203.0.113.10, remote_dir: relative}\n", "must be an absolute path"),
        ("registry: {address: 203.0.113.10, remote_dir: /etc}\n", "is a system folder"),
        ("registry: {address: 203.0.113.10, remote_dir: /etc/docker}\n", "'/etc/docker' is a system folder or inside one"),
        ("registry: {address: 203.0.113.10, data: /var/lib/containerd/x}\n", "is a system folder or inside one"),
        ("registry: {address: 203.0.113.10, data: /var/lib/containerd}\n", "is a system folder or inside one"),
        ("registry: {address: 203.0.113.10, data: /usr/share}\n", "is a system folder or inside one"),
        ("registry: {address: 203.0.113.10, remote_dir: /home/alice}\n", "is a system folder or inside one"),
        ("registry: {address: 203.0.113.10, remote_dir: /root/.ssh}\n", "is a system folder or inside one"),
        ("registry: {address: 203.0.113.10}\nclients: [a.example, 'a.example:22']\n", "clients[1]: a.example:22 is listed twice (also clients[0])"),
        ("registry: {address: 203.0.113.10}\nclients: ['2001:db8::1', '[2001:db8:0::1]:22']\n", "is listed twice (also clients[0])"),
        ("registry: {address: 203.0.113.10}\nclients: [A.example, a.EXAMPLE]\n", "is listed twice"),
        ("registry: {address: 203.0.113.10, image: 'registry:2;id'}\n", "registry.image: 'registry:2;id' is not an image reference"),
        ("registry: {address: 203.0.113.10, image: 'UPPER:case'}\n", "is not an image reference"),
        ("registry: {address: 203.0.113.10}\n? !!set {a, b}\n: 1\n", "not valid YAML at line 2"),
        ('registry: {address: 203.0.113.10, "por\\nt\\e[31mRED": 1}\n', "unknown key registry.'por\\nt\\x1b[31mRED'"),
        ("registry: 203.0.113.10\n", "'registry' must be a mapping"),
        ("registry: {address: 203.0.113.10}\nrootless_users: [Alice]\n", "rootless_users: 'Alice' is not a user name"),
        ("registry: {address: 203.0.113.10}\nrootless_users: {a: b}\n", "expected a list of user names, not a dict"),
        ("registry: {address: 203.0.113.10}\nclients: [{host: a.example, rootless_users: [root]}]\n", "clients[0].rootless_users: root runs the system Docker"),
        ("registry: {address: 203.0.113.10}\nclients: [{host: a.example, rootless_users: ['a;rm -rf /']}]\n", "is not a user name"),
        ("registry: {address: 203.0.113.10}\nclients: [{host: a.example, rootles_users: [ci]}]\n", "did you mean 'rootless_users'?"),
    ],
)  # fmt: skip
def test_bad_inventory_gets_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_inventory(text, Path("inv.yaml"))
    text_of_error = str(caught.value)
    assert message in text_of_error
    assert text_of_error.startswith("inv.yaml")
    assert "\n" not in text_of_error


def test_missing_file_names_it_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no such inventory file.*--inventory PATH"):
        load_inventory(tmp_path / "nope.yaml")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder"):
        load_inventory(tmp_path)


@pytest.mark.parametrize("image", [
    "registry:2", "registry", "mirror.example:5000/library/registry:2.8.3",
    "10.0.0.5:5000/team/registry:2", "[2001:db8::1]:5000/registry:2",
    "localhost/registry:2", "registry@sha256:" + "a" * 64,
])  # fmt: skip
def test_image_references_docker_takes(image: str) -> None:
    text = f"registry: {{address: 203.0.113.10, image: '{image}'}}\n"
    assert parse_inventory(text).registry.image == image


def test_a_device_or_pipe_is_no_inventory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="/dev/zero: not a regular file"):
        load_inventory(Path("/dev/zero"))
    fifo = tmp_path / "inventory.yaml"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        load_inventory(fifo)  # and does not hang


def test_a_huge_file_is_no_inventory(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    with path.open("wb") as stream:
        stream.truncate(5 * 1024 * 1024)
    with pytest.raises(InputError, match="more than the 4194304 such a file can have"):
        load_inventory(path)


def test_unreadable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="not UTF-8"):
        load_inventory(path)


# Arbitrary documents: a valid inventory or our own error, never anything else. --------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["203.0.113.10", "2001:db8::1", "a.example", "root@h:22", "auto",
                     "docker", "podman", "/opt/x", "registry:2", "-1", "65536"]),
)  # fmt: skip
keys = st.sampled_from(
    ["registry", "clients", "runtimes", "address", "port", "extra_addresses", "ssh",
     "image", "data", "remote_dir", "container", "host", "other"]
)  # fmt: skip
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(documents)
def test_any_document_loads_or_gives_our_error(document: object) -> None:
    text = yaml.safe_dump(document)
    try:
        parse_inventory(text, Path("inv.yaml"))
    except InputError as exc:
        assert str(exc).startswith("inv.yaml")
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_loads_or_gives_our_error(text: str) -> None:
    try:
        parse_inventory(text, Path("inv.yaml"))
    except InputError as exc:
        assert str(exc).startswith("inv.yaml")


def test_rootless_users_default_for_all_clients_and_per_client() -> None:
    book = parse_inventory(
        "registry: {address: 203.0.113.10}\nrootless_users: [ci]\n"
        "clients:\n  - 203.0.113.21\n"
        "  - {host: 203.0.113.22, rootless_users: [alice, bob, alice]}\n"
        "  - {host: 203.0.113.23, rootless_users: []}\n"
    )
    assert [client.rootless_users for client in book.clients] == [
        ("ci",),
        ("alice", "bob"),
        (),
    ]
