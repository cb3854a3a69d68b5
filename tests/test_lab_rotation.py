"""A CA rotation in the lab: the client keeps pulling through every step."""

from __future__ import annotations

import pytest

from tests.conftest import Workspace, run_on
from tests.lab import Lab

pytestmark = pytest.mark.lab


def test_rotate_ca_keeps_clients_pulling(lab: Lab, workspace: Workspace) -> None:
    address = lab.host("registry").address
    image = f"{address}:5000/lab/rotated:1"
    trusted = lab.host("client1").files / f"etc/docker/certs.d/{address}:5000/ca.crt"
    workspace.write_inventory(
        {"registry": {"address": address}, "clients": [lab.host("client1").address],
         "runtimes": ["docker"]}
    )  # fmt: skip
    assert (
        workspace.fab(
            "setup-registry", "--image-archive", str(lab.registry_image_archive())
        ).code
        == 0
    )
    assert workspace.fab("trust-clients").code == 0
    lab.build_test_image("client1", image)
    assert run_on(lab, "client1", f"docker push {image}").returncode == 0
    old_ca = (workspace.folder / "pki/ca.crt").read_bytes()

    def pull() -> None:
        done = run_on(
            lab, "client1", f"docker rmi {image} >/dev/null; docker pull {image}"
        )
        assert done.returncode == 0, done.stderr

    out_of_order = workspace.fab("rotate-ca", "--step", "finish")
    assert (
        out_of_order.code == 1 and "no CA rotation in progress" in out_of_order.output
    )

    begun = workspace.fab("rotate-ca", "--step", "begin")
    assert begun.code == 0, begun.output
    new_ca = (workspace.folder / "pki/next/ca.crt").read_bytes()
    # What trust-clients wrote before the rotation is still ours to remove.
    preview = workspace.fab("untrust-clients", "--dry-run")
    assert "would remove" in preview.output and "kept" not in preview.output

    not_yet = workspace.fab("rotate-ca", "--step", "finish")
    assert not_yet.code == 1 and "run rotate-ca --step switch first" in not_yet.output

    # The switch refuses while a client does not trust the next CA.
    early = workspace.fab("rotate-ca", "--step", "switch")
    assert early.code == 1
    assert "does not trust the next CA yet" in early.output
    pull()

    assert "wrote" in workspace.fab("trust-clients").output
    assert trusted.read_bytes() == old_ca + new_ca
    pull()

    switched = workspace.fab("rotate-ca", "--step", "switch")
    assert switched.code == 0, switched.output
    assert "the registry now uses the next CA" in switched.output
    pull()
    again = workspace.fab("rotate-ca", "--step", "switch")
    assert again.code == 0 and "1 unchanged" in again.output
    status = workspace.fab("status")
    assert "ok (HTTP 200" in status.output  # checked against both CAs
    assert "next CA" in status.output
    assert "the next CA signs the registry's certificate now" in status.output
    assert workspace.fab("restart").code == 0
    assert (
        "unchanged" in workspace.fab("setup-registry").output
    )  # signs with the next CA

    finished = workspace.fab("rotate-ca", "--step", "finish")
    assert finished.code == 0, finished.output
    assert (workspace.folder / "pki/ca.crt").read_bytes() == new_ca
    twice = workspace.fab("rotate-ca", "--step", "finish")
    assert twice.code == 0 and "pki: unchanged: no rotation in progress" in (
        twice.output
    )
    # The bundle trust-clients wrote during the rotation is still known as ours:
    # replaced by the new CA alone, not kept aside as the client's own file.
    after = workspace.fab("trust-clients")
    assert after.code == 0, after.output
    assert "host's own" not in after.output
    assert trusted.read_bytes() == new_ca
    assert not trusted.with_name("ca.crt.orig").exists()
    pull()
    assert workspace.fab("untrust-clients").code == 0
    assert not trusted.exists()
