"""check-clients in the lab: real clients over SSH, a real registry, real pulls.

Each failure is made for real on a client (no trust, a folder without the port, a
daemon.json proxy, the registry stopped, containerd's host.toml typo) and must come out
as that host's line with its kind and fix. Everything a test changes is put back.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Workspace, run_on
from tests.lab import Lab

pytestmark = pytest.mark.lab

# As in test_lab_runtimes: lab hosts share the process table, so containerd is stopped
# by its own pid, never by name.
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
    """A registry and an inventory of both clients; yields ADDRESS:PORT.

    Untrusts both clients at the end, whatever the test left.
    """
    address = lab.host("registry").address
    setup = workspace.fab(
        "-H", address, "setup-registry",
        "--image-archive", str(lab.registry_image_archive()),
        "--replace-ca",  # each test here brings its own CA
    )  # fmt: skip
    assert setup.code == 0, setup.output
    workspace.write_inventory(
        {
            "registry": {"address": address, "port": 5000},
            "clients": [lab.host("client1").address, lab.host("client2").address],
        }
    )
    try:
        yield f"{address}:5000"
    finally:
        untrust = workspace.fab("untrust-clients")
        assert untrust.code == 0, untrust.output


def push_image(lab: Lab, workspace: Workspace, reference: str) -> None:
    trust = workspace.fab("trust-clients")
    assert trust.code == 0, trust.output
    lab.build_test_image("client1", reference)
    pushed = run_on(lab, "client1", f"docker push {reference}")
    assert pushed.returncode == 0, pushed.stderr


def wait_for_registry(lab: Lab, authority: str) -> None:
    ca = f"/etc/docker/certs.d/{authority}/ca.crt"
    command = f"curl -sS --noproxy '*' --cacert {ca} https://{authority}/v2/"
    deadline = time.monotonic() + 60
    while run_on(lab, "client1", command).returncode != 0:
        assert time.monotonic() < deadline, "the registry did not come back"
        time.sleep(0.5)


def test_check_clients_says_what_fails_and_the_fix(
    lab: Lab, workspace: Workspace, registry: str
) -> None:
    address = registry.split(":")[0]
    client1 = lab.host("client1").address
    client2 = lab.host("client2").address
    image = "lab/checks:1"
    reference = f"{registry}/{image}"

    # Before trust-clients: both clients fail on trust, with the fix.
    untrusted = workspace.fab("check-clients")
    assert untrusted.code == 1, untrusted.output
    for host in (client1, client2):
        assert re.search(
            rf"{host}: failed: trust: /etc/docker/certs.d/{registry}/ca.crt: missing"
            r", .*certificate.*; run trust-clients",
            untrusted.output,
        ), untrusted.output
    assert "recap: 2 hosts: 2 failed" in untrusted.output

    push_image(lab, workspace, reference)
    stray = lab.host("client1").files / f"etc/docker/certs.d/{address}"
    daemon_json = lab.host("client1").files / "etc/docker/daemon.json"
    try:
        # Trusted: a real docker pull on client1 and a skopeo inspect on client2. The
        # pulled image was not on client1 before, and is not after.
        assert run_on(lab, "client1", f"docker rmi {reference}").returncode == 0
        good = workspace.fab("check-clients", "--image", image)
        assert good.code == 0, good.output
        assert re.search(
            rf"{client1}: ok: docker, .*trust; TLS; docker pull {image}; "
            rf"skopeo inspect {image}",
            good.output,
        ), good.output
        assert re.search(
            rf"{client2}: ok: .*skopeo inspect {image}; "
            r"note: runtime: dockerd is not answering; docker pull not tried",
            good.output,
        ), good.output
        assert "recap: 2 hosts: 2 ok" in good.output
        left = run_on(lab, "client1", f"docker image inspect {reference}")
        assert left.returncode != 0, "check-clients left the pulled image behind"

        # Without --image, the registry's catalog names one to pull.
        picked = workspace.fab("-H", client1, "check-clients")
        assert picked.code == 0, picked.output
        assert re.search(rf"{client1}: ok: .*; docker pull \S+:\S+", picked.output)

        # C03: a folder without the port is pointed out.
        stray.mkdir(parents=True)
        (stray / "ca.crt").write_bytes((workspace.folder / "pki/ca.crt").read_bytes())
        with_stray = workspace.fab("-H", client1, "check-clients", "--image", image)
        assert with_stray.code == 0, with_stray.output
        assert (
            f"note: stray: /etc/docker/certs.d/{address} is not read for {registry} "
            f"images (clients read a folder named exactly {registry}); remove it"
        ) in with_stray.output
        (stray / "ca.crt").unlink()
        stray.rmdir()

        # A daemon.json proxy that would catch the registry's address.
        proxy = f"http://{lab.host('registry').address.rsplit('.', 1)[0]}.1:3128"
        daemon_json.write_text(json.dumps({"proxies": {"https-proxy": proxy}}))
        proxied = workspace.fab("-H", client1, "check-clients", "--image", image)
        assert proxied.code == 1, proxied.output
        assert (
            f"{client1}: failed: proxy: dockerd would send {registry} through proxy "
            f"{proxy} (set in /etc/docker/daemon.json); no-proxy (unset) does not "
            f'cover {address}; add {address} to "proxies": {{"no-proxy"}} in '
            "/etc/docker/daemon.json, then systemctl restart docker"
        ) in proxied.output
        daemon_json.write_text(
            json.dumps({"proxies": {"https-proxy": proxy, "no-proxy": address}})
        )
        excepted = workspace.fab("-H", client1, "check-clients", "--image", image)
        assert excepted.code == 0, excepted.output
        daemon_json.unlink()

        # The registry stopped: the network, not trust.
        assert run_on(lab, "registry", "docker stop registry").returncode == 0
        try:
            stopped = workspace.fab("check-clients", "--image", image)
        finally:
            assert run_on(lab, "registry", "docker start registry").returncode == 0
            wait_for_registry(lab, registry)
        assert stopped.code == 1, stopped.output
        for host in (client1, client2):
            assert re.search(
                rf"{host}: failed: network: cannot reach {registry} from this host "
                rf"\(curl: \(7\) .*\); check the firewall and the route to {registry}",
                stopped.output,
            ), stopped.output
        assert "trust:" not in stopped.output
    finally:
        if (stray / "ca.crt").exists():
            (stray / "ca.crt").unlink()
        if stray.exists():
            stray.rmdir()
        daemon_json.unlink(missing_ok=True)
        run_on(lab, "registry", "docker start registry")
        run_on(lab, "client1", f"docker rmi {reference}")


def test_check_clients_pulls_through_containerd_and_names_the_host_toml_typo(
    lab: Lab, workspace: Workspace, registry: str
) -> None:
    client2 = lab.host("client2").address
    image = "lab/checks-ctr:1"
    reference = f"{registry}/{image}"
    push_image(lab, workspace, reference)
    folder = lab.host("client2").files / f"etc/containerd/certs.d/{registry}"
    started = run_on(lab, "client2", CONTAINERD)
    assert started.returncode == 0, started.stderr
    try:
        assert run_on(lab, "client2", WAIT_FOR_CONTAINERD).returncode == 0

        # C06: the pull goes the kubelet's way, through hosts.toml, and leaves
        # containerd's image list as it was.
        good = workspace.fab("-H", client2, "check-clients", "--image", image)
        assert good.code == 0, good.output
        assert re.search(rf"{client2}: ok: .*; ctr pull {image}", good.output)
        images = run_on(lab, "client2", "ctr images ls -q").stdout
        assert reference not in images

        # C06 as met in the field: the CA under a name containerd does not read on
        # its own, named in host.toml instead of hosts.toml. The real pull fails.
        (folder / "ca.crt").rename(folder / "registry-ca.pem")
        (folder / "hosts.toml").rename(folder / "host.toml")
        typo = workspace.fab("-H", client2, "check-clients", "--image", image)
        assert typo.code == 1, typo.output
        assert (
            f"trust: /etc/containerd/certs.d/{registry}/host.toml is not read by "
            "containerd (the name is hosts.toml); remove it and run trust-clients"
        ) in typo.output
        assert f"/etc/containerd/certs.d/{registry}/hosts.toml: missing" in typo.output
        assert re.search(
            rf"ctr pull {registry}/{image}: .*(x509|certificate)", typo.output
        ), typo.output
    finally:
        if (folder / "host.toml").exists():
            (folder / "host.toml").rename(folder / "hosts.toml")
        if (folder / "registry-ca.pem").exists():
            (folder / "registry-ca.pem").rename(folder / "ca.crt")
        run_on(lab, "client2", STOP_CONTAINERD)
        run_on(lab, "client1", f"docker rmi {reference}")
