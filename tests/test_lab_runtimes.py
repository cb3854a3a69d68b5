"""Trust on every kind of client, in the lab, with the real runtimes Debian ships.

containerd (a real ``ctr`` pull that reads hosts.toml), podman and skopeo (through
/etc/containers/certs.d), the OS trust store (curl without --cacert), a user's rootless
Docker (through ~/.config/docker/certs.d); k3s is not in
Debian, so its registries.yaml is checked by parsing what we wrote. Each pull fails with
x509 before trust-clients, succeeds after, and fails again after untrust-clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.conftest import Workspace, run_on
from tests.lab import Lab

pytestmark = pytest.mark.lab

# containerd reads /etc/containerd/config.toml when it exists, defaults otherwise. Lab
# hosts share the machine's process table: stop it by its own pid, never by name.
CONTAINERD = (
    "containerd >/tmp/containerd.log 2>&1 </dev/null & echo $! >/run/lab-containerd.pid"
)
STOP_CONTAINERD = "kill $(cat /run/lab-containerd.pid)"
WAIT_FOR_CONTAINERD = (
    "for i in $(seq 50); do timeout 2 ctr version >/dev/null 2>&1 && exit 0; "
    "sleep 0.1; done; exit 1"
)


@pytest.fixture
def registry(lab: Lab, workspace: Workspace) -> Iterator[str]:
    """A registry with one image in it, pushed from client1; yields the image name."""
    address = lab.host("registry").address
    setup = workspace.fab(
        "-H", address, "setup-registry",
        "--image-archive", str(lab.registry_image_archive()),
        "--replace-ca",  # each test here brings its own CA
    )  # fmt: skip
    assert setup.code == 0, setup.output
    image = f"{address}:5000/lab/runtimes:1"
    pusher = lab.host("client1").address
    trusted = workspace.fab(
        "-H", pusher, "trust-clients", "--registry", address, "--runtimes", "docker"
    )
    assert trusted.code == 0, trusted.output
    lab.build_test_image("client1", image)
    pushed = run_on(lab, "client1", f"docker push {image}")
    assert pushed.returncode == 0, pushed.stderr
    yield image
    workspace.fab("-H", pusher, "untrust-clients", "--registry", address)


def test_containerd_and_podman_trust_and_untrust(
    lab: Lab, workspace: Workspace, registry: str
) -> None:
    address = lab.host("registry").address
    client = lab.host("client2").address
    ctr_pull = (
        f"timeout 60 ctr images pull --hosts-dir /etc/containerd/certs.d {registry}"
    )
    podman_pull = (
        f"podman rmi --force {registry} >/dev/null 2>&1; podman pull {registry}"
    )
    assert (
        run_on(
            lab, "client2", f"rm -f /etc/containerd/config.toml; {CONTAINERD}"
        ).returncode
        == 0
    )
    assert run_on(lab, "client2", WAIT_FOR_CONTAINERD).returncode == 0

    for pull in (ctr_pull, podman_pull):
        refused = run_on(lab, "client2", pull)
        assert refused.returncode != 0
        assert (
            "certificate signed by unknown authority" in refused.stderr + refused.stdout
        )

    trust = workspace.fab("-H", client, "trust-clients", "--registry", address)
    assert trust.code == 0, trust.output
    assert "runtimes: docker, containerd, podman" in trust.output
    assert f"wrote /etc/containerd/certs.d/{address}:5000/hosts.toml" in trust.output
    assert "wrote /etc/containerd/config.toml" in trust.output
    assert "containerd is not run by systemd here: restart it to apply" in trust.output

    for pull in (ctr_pull, podman_pull):
        pulled = run_on(lab, "client2", pull)
        assert pulled.returncode == 0, pulled.stderr
    # containerd's own parser puts config_path where the CRI plugin (the kubelet's
    # way in) reads it.
    dump = run_on(
        lab, "client2", "containerd --config /etc/containerd/config.toml config dump"
    )
    assert 'config_path = "/etc/containerd/certs.d"' in dump.stdout

    again = workspace.fab("-H", client, "trust-clients", "--registry", address)
    assert "recap: 1 host: 1 unchanged" in again.output

    untrust = workspace.fab("-H", client, "untrust-clients", "--registry", address)
    assert untrust.code == 0, untrust.output
    assert (
        f"removed /etc/containerd/certs.d/{address}:5000/hosts.toml" in untrust.output
    )
    for pull in (ctr_pull, podman_pull):
        refused = run_on(lab, "client2", pull)
        assert refused.returncode != 0
        assert (
            "certificate signed by unknown authority" in refused.stderr + refused.stdout
        )
    assert not (
        lab.host("client2").files / f"etc/containerd/certs.d/{address}:5000"
    ).exists()
    assert run_on(lab, "client2", STOP_CONTAINERD).returncode == 0


def test_skopeo_reads_containers_certs_d(
    lab: Lab, workspace: Workspace, registry: str
) -> None:
    address = lab.host("registry").address
    client = lab.host("client2").address
    trust = workspace.fab(
        "-H", client, "trust-clients", "--registry", address, "--runtimes", "podman"
    )
    assert trust.code == 0, trust.output
    assert "/etc/docker/certs.d" not in trust.output
    inspected = run_on(lab, "client2", f"skopeo inspect docker://{registry}")
    assert inspected.returncode == 0, inspected.stderr
    workspace.fab("-H", client, "untrust-clients", "--registry", address)
    refused = run_on(lab, "client2", f"skopeo inspect docker://{registry}")
    assert "certificate signed by unknown authority" in refused.stderr


def test_os_trust_store(lab: Lab, workspace: Workspace, registry: str) -> None:
    address = lab.host("registry").address
    client = lab.host("client2").address
    curl = f"curl --silent --show-error --fail https://{address}:5000/v2/"
    assert run_on(lab, "client2", curl).returncode != 0

    trust = workspace.fab(
        "-H", client, "trust-clients", "--registry", address, "--runtimes", "system"
    )
    assert trust.code == 0, trust.output
    assert "rebuilt the OS trust store" in trust.output
    assert "restart them" in trust.output  # C10: running daemons need a restart
    assert run_on(lab, "client2", curl).returncode == 0

    untrust = workspace.fab(
        "-H", client, "untrust-clients", "--registry", address, "--runtimes", "system"
    )
    assert untrust.code == 0, untrust.output
    assert run_on(lab, "client2", curl).returncode != 0


def test_k3s_registries_yaml_merge(
    lab: Lab, workspace: Workspace, registry: str
) -> None:
    address = lab.host("registry").address
    client = lab.host("client2")
    authority = f"{address}:5000"
    original = (
        "# team mirrors\nmirrors:\n  docker.io:\n    endpoint:\n"
        '      - "https://mirror.example:5000"\n'
    )
    config = client.files / "etc/rancher/k3s/registries.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(original)

    trust = workspace.fab(
        "-H",
        client.address,
        "trust-clients",
        "--registry",
        address,
        "--runtimes",
        "k3s",
    )
    assert trust.code == 0, trust.output
    assert "k3s is not run by systemd here: restart it to apply" in trust.output
    text = config.read_text()
    assert "# team mirrors" in text
    document = YAML(typ="safe").load(text)
    assert document["mirrors"]["docker.io"]["endpoint"] == [
        "https://mirror.example:5000"
    ]
    assert document["mirrors"][authority]["endpoint"] == [f"https://{authority}"]
    ca_path = document["configs"][authority]["tls"]["ca_file"]
    assert (client.files / ca_path.lstrip("/")).read_bytes() == (
        workspace.folder / "pki/ca.crt"
    ).read_bytes()

    again = workspace.fab(
        "-H",
        client.address,
        "trust-clients",
        "--registry",
        address,
        "--runtimes",
        "k3s",
    )
    assert "1 unchanged" in again.output and "restart" not in again.output

    workspace.fab(
        "-H",
        client.address,
        "untrust-clients",
        "--registry",
        address,
        "--runtimes",
        "k3s",
    )
    assert YAML(typ="safe").load(config.read_text()) == YAML(typ="safe").load(original)
    config.unlink()


@pytest.fixture
def rootless_user(lab: Lab) -> str:
    return lab.ensure_user("rootless")


@pytest.fixture
def rootless_docker(lab: Lab, rootless_user: str) -> Iterator[str]:
    """A rootless Docker of the rootless user on client2; yields its DOCKER_HOST."""
    docker_host = lab.start_rootless_docker("client2", rootless_user)
    yield docker_host
    lab.stop_rootless_docker("client2", rootless_user)


def test_rootless_docker_trust_and_untrust(
    lab: Lab,
    workspace: Workspace,
    registry: str,
    rootless_user: str,
    rootless_docker: str,
) -> None:
    address = lab.host("registry").address
    client = lab.host("client2")
    user = rootless_user
    pull = (
        f"cd / && runuser -u {user} -- env DOCKER_HOST={rootless_docker} "
        f"docker pull {registry}"
    )
    refused = run_on(lab, "client2", pull)
    assert refused.returncode != 0
    assert "certificate signed by unknown authority" in refused.stderr

    # A link the user made from ~/.config/docker to a root-owned folder: the write
    # goes as the user, so it cannot land in /etc/docker.
    home = client.files / "home" / user
    link = home / ".config/docker"
    aside = home / ".config/docker.aside"
    link.parent.mkdir(exist_ok=True)
    made_by_dockerd = link.exists()
    if made_by_dockerd:
        link.rename(aside)
    link.symlink_to("/etc/docker")
    workspace.write_inventory(
        {
            "registry": {"address": address},
            "clients": [
                {
                    "host": client.address,
                    "runtimes": ["podman"],
                    "rootless_users": [user],
                },
                {"host": lab.host("client1").address, "rootless_users": ["nosuchuser"]},
            ],
        }
    )
    trapped = workspace.fab("trust-clients")
    assert trapped.code == 1
    assert f"{client.address}: failed: could not install the CA" in trapped.output
    assert not (client.files / f"etc/docker/certs.d/{address}:5000").exists()
    # A user the host does not have is named, and nothing was changed there.
    assert (
        f"{lab.host('client1').address}: failed: could not install the CA: no user "
        "nosuchuser on this host; create it, or remove it from rootless_users"
    ) in trapped.output
    link.unlink()
    if made_by_dockerd:
        aside.rename(link)

    workspace.write_inventory(
        {
            "registry": {"address": address},
            "clients": [
                {
                    "host": client.address,
                    "runtimes": ["podman"],
                    "rootless_users": [user],
                }
            ],
        }
    )
    trust = workspace.fab("trust-clients")
    assert trust.code == 0, trust.output
    assert f"runtimes: podman, docker (rootless, {user})" in trust.output
    ca = home / f".config/docker/certs.d/{address}:5000/ca.crt"
    assert f"wrote /home/{user}/.config/docker/certs.d/{address}:5000/ca.crt" in (
        trust.output
    )
    assert ca.read_bytes() == (workspace.folder / "pki/ca.crt").read_bytes()
    owner = int(run_on(lab, "client2", f"id -u {user}").stdout)
    assert ca.stat().st_uid == owner and ca.stat().st_mode & 0o777 == 0o644
    pulled = run_on(lab, "client2", pull)
    assert pulled.returncode == 0, pulled.stderr
    assert "1 unchanged" in workspace.fab("trust-clients").output

    # The same by options, as with -H: the inverse removes the user's file too.
    untrust = workspace.fab(
        "-H", client.address, "untrust-clients", "--registry", address,
        "--runtimes", "podman", "--rootless-users", user,
    )  # fmt: skip
    assert untrust.code == 0, untrust.output
    assert f"removed /home/{user}/.config/docker/certs.d/{address}:5000/ca.crt" in (
        untrust.output
    )
    assert not ca.exists()
    refused = run_on(lab, "client2", pull)
    assert "certificate signed by unknown authority" in refused.stderr


def test_the_hosts_own_files_are_kept_aside_and_put_back(
    lab: Lab, workspace: Workspace, registry: str
) -> None:
    address = lab.host("registry").address
    client = lab.host("client2")
    # A client that had its own trust for this registry: a mirror in hosts.toml and a
    # CA file that is not ours.
    mirror = f'server = "https://{address}:5000"\n[host."https://mirror.local:5000"]\n'
    hosts = client.files / f"etc/containerd/certs.d/{address}:5000/hosts.toml"
    docker_ca = client.files / f"etc/docker/certs.d/{address}:5000/ca.crt"
    for path, text in ((hosts, mirror), (docker_ca, "an old hand-made CA\n")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    trust = workspace.fab(
        "-H", client.address, "trust-clients", "--registry", address,
        "--runtimes", "docker,containerd",
    )  # fmt: skip
    assert trust.code == 0, trust.output
    for path in (hosts, docker_ca):
        remote = "/" + str(path.relative_to(client.files))
        assert f"kept the host's own {remote} as {remote}.orig" in trust.output
    assert Path(f"{hosts}.orig").read_text() == mirror
    # Clients read only *.crt files of the folder: ours serves, the kept one is idle.
    inspected = run_on(lab, "client2", f"skopeo inspect docker://{registry}")
    assert inspected.returncode == 0, inspected.stderr
    again = workspace.fab(
        "-H", client.address, "trust-clients", "--registry", address,
        "--runtimes", "docker,containerd",
    )  # fmt: skip
    assert "recap: 1 host: 1 unchanged" in again.output

    untrust = workspace.fab(
        "-H", client.address, "untrust-clients", "--registry", address,
        "--runtimes", "docker,containerd",
    )  # fmt: skip
    assert untrust.code == 0, untrust.output
    assert hosts.read_text() == mirror
    assert docker_ca.read_text() == "an old hand-made CA\n"
    assert not Path(f"{hosts}.orig").exists()
    assert f"put back the host's own /etc/containerd/certs.d/{address}:5000" in (
        untrust.output
    )
    for path in (hosts, docker_ca):
        path.unlink()
