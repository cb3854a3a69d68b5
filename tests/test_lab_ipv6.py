"""A registry on a bare IPv6 address, end to end over the lab's IPv6 link.

The certificate holds the IPv6 address as an IP SAN, clients get bracketed
``[ADDRESS]:PORT`` folders, and containerd (the kubelet's runtime) pushes and pulls
through them. SSH still goes over IPv4, as ``registry.ssh`` allows.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Workspace, run_on
from tests.lab import Lab

pytestmark = pytest.mark.lab

# A containerd of client1's own, beside the one dockerd runs: stopped by its pid,
# as lab hosts share the machine's process table.
CONTAINERD = (
    "containerd >/tmp/containerd.log 2>&1 </dev/null & echo $! >/run/lab-containerd.pid\n"
    "for i in $(seq 50); do timeout 2 ctr version >/dev/null 2>&1 && exit 0; "
    "sleep 0.1; done; exit 1"
)
STOP_CONTAINERD = "kill $(cat /run/lab-containerd.pid)"


@pytest.fixture
def containerd(lab: Lab) -> Iterator[None]:
    assert run_on(lab, "client1", CONTAINERD).returncode == 0
    yield
    run_on(lab, "client1", STOP_CONTAINERD)


def test_ipv6_registry_end_to_end(
    lab: Lab, workspace: Workspace, containerd: None
) -> None:
    registry = lab.host("registry")
    v6 = registry.address6
    authority = f"[{v6}]:5000"
    workspace.write_inventory(
        {
            "registry": {"address": v6, "ssh": registry.address},
            "clients": [lab.host("client1").address, lab.host("client2").address],
        }
    )
    setup = workspace.fab(
        "setup-registry", "--image-archive", str(lab.registry_image_archive())
    )
    assert setup.code == 0, setup.output
    assert f"https://{authority}/v2/ serves our certificate over TLS" in setup.output
    assert "named with an IPv6 address" in setup.output

    # An image for containerd to push, named as clients name it.
    image = f"{authority}/lab/v6:1"
    lab.build_test_image("client1", "lab/v6:1")
    imported = run_on(
        lab,
        "client1",
        "docker save lab/v6:1 -o /tmp/v6.tar && ctr images import /tmp/v6.tar "
        f"&& ctr images tag docker.io/lab/v6:1 '{image}'",
    )
    assert imported.returncode == 0, imported.stderr
    push = f"ctr images push --hosts-dir /etc/containerd/certs.d '{image}'"
    pull = (
        f"ctr images rm '{image}' >/dev/null; "
        f"ctr images pull --hosts-dir /etc/containerd/certs.d '{image}'"
    )
    refused = run_on(lab, "client1", push)
    assert refused.returncode != 0
    assert "certificate signed by unknown authority" in refused.stderr + refused.stdout

    trust = workspace.fab("trust-clients")
    assert trust.code == 0, trust.output
    for folder in ("docker/certs.d", "containerd/certs.d", "containers/certs.d"):
        assert f"wrote /etc/{folder}/{authority}/ca.crt" in trust.output
    hosts_toml = lab.host("client1").files / f"etc/containerd/certs.d/{authority}"
    assert f'server = "https://{authority}"' in (hosts_toml / "hosts.toml").read_text()

    pushed = run_on(lab, "client1", push)
    assert pushed.returncode == 0, pushed.stderr
    pulled = run_on(lab, "client1", pull)
    assert pulled.returncode == 0, pulled.stderr
    assert "2 unchanged" in workspace.fab("trust-clients").output

    # containerd's pull passes; a client tool that cannot parse the name is told
    # apart from a trust problem.
    checked = workspace.fab("check-clients", "--image", "lab/v6:1")
    (client1,) = [
        line
        for line in checked.output.splitlines()
        if f"{lab.host('client1').address}:" in line
    ]
    assert "containerd is not answering" not in client1
    assert "ctr pull" not in client1  # it pulled: only failures are listed
    for line in (client1, checked.output):
        assert "see the message" not in line and "trust:" not in line
    assert "cannot parse image names on an IPv6 address" in checked.output

    untrust = workspace.fab("untrust-clients")
    assert untrust.code == 0, untrust.output
    refused = run_on(lab, "client1", pull)
    assert refused.returncode != 0
    assert "certificate signed by unknown authority" in refused.stderr + refused.stdout
