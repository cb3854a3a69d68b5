"""The main job end to end in the lab: setup-registry, then trust-clients.

Real sshd, real dockerd, the real registry binary, real docker and skopeo clients. The
registry address is a lab address, not loopback: Docker skips TLS checks on loopback.
"""

from __future__ import annotations

import re

import pytest
from cryptography import x509

from tasks import pki
from tests.conftest import Workspace, run_on
from tests.lab import Lab

pytestmark = pytest.mark.lab


def test_main_job_end_to_end(lab: Lab, workspace: Workspace) -> None:
    registry = lab.host("registry")
    authority = f"{registry.address}:5000"
    image = f"{authority}/lab/app:1"
    archive = lab.registry_image_archive()

    # The registry host gets its registry from the archive, as an air-gapped host.
    setup = workspace.fab(
        "-H", registry.address, "setup-registry", "--image-archive", str(archive)
    )
    assert setup.code == 0, setup.output
    # Created, or recreated when an earlier test left a registry of another CA.
    assert re.search(r"container (re)?created", setup.output)
    assert f"https://{authority}/v2/ serves our certificate over TLS" in setup.output
    ca_cert = x509.load_pem_x509_certificate(
        (workspace.folder / "pki/ca.crt").read_bytes()
    )
    assert pki.fingerprint(ca_cert) in setup.output

    # Before trust: the client refuses the registry's certificate.
    lab.build_test_image("client1", image)
    refused = run_on(lab, "client1", f"docker push {image}")
    assert refused.returncode != 0
    assert "x509: certificate signed by unknown authority" in refused.stderr
    refused = run_on(lab, "client2", f"skopeo inspect docker://{image}")
    assert refused.returncode != 0
    assert "certificate signed by unknown authority" in refused.stderr

    inventory = {
        "registry": {"address": registry.address, "port": 5000},
        "clients": [
            lab.host("client1").address,
            f"root@{lab.host('client2').address}:22",
        ],
    }
    workspace.write_inventory(inventory)
    trust = workspace.fab("trust-clients")
    assert trust.code == 0, trust.output
    assert f"wrote /etc/docker/certs.d/{authority}/ca.crt" in trust.output
    assert f"wrote /etc/containers/certs.d/{authority}/ca.crt" in trust.output
    assert "recap: 2 hosts: 2 changed" in trust.output
    written = lab.host("client1").files / f"etc/docker/certs.d/{authority}/ca.crt"
    assert written.read_bytes() == (workspace.folder / "pki/ca.crt").read_bytes()
    assert oct(written.stat().st_mode & 0o777) == "0o644"

    # After trust: push and pull from one client, inspect from the other.
    pushed = run_on(lab, "client1", f"docker push {image}")
    assert pushed.returncode == 0, pushed.stderr
    assert run_on(lab, "client1", f"docker rmi {image}").returncode == 0
    pulled = run_on(lab, "client1", f"docker pull {image}")
    assert pulled.returncode == 0, pulled.stderr
    inspected = run_on(lab, "client2", f"skopeo inspect docker://{image}")
    assert inspected.returncode == 0, inspected.stderr
    assert '"Name": "' + f"{authority}/lab/app" in inspected.stdout

    # The data outlives the container.
    assert run_on(lab, "registry", "docker restart registry").returncode == 0
    again = run_on(lab, "client2", f"skopeo inspect docker://{image}")
    assert again.returncode == 0, again.stderr

    # A second run of both tasks changes nothing, and everything still works.
    setup_again = workspace.fab("-H", registry.address, "setup-registry")
    assert setup_again.code == 0, setup_again.output
    assert f"{registry.address}: unchanged" in setup_again.output
    trust_again = workspace.fab("trust-clients")
    assert trust_again.code == 0, trust_again.output
    assert "recap: 2 hosts: 2 unchanged" in trust_again.output
    assert "wrote" not in trust_again.output
    assert run_on(lab, "client1", f"docker pull {image}").returncode == 0

    # untrust-clients is the exact inverse: the client refuses the registry again.
    untrust = workspace.fab("untrust-clients")
    assert untrust.code == 0, untrust.output
    assert f"removed /etc/docker/certs.d/{authority}/ca.crt" in untrust.output
    assert not written.exists()
    assert not written.parent.exists()
    refused = run_on(lab, "client1", f"docker pull {image}")
    assert "x509: certificate signed by unknown authority" in refused.stderr
    assert "recap: 2 hosts: 2 unchanged" in workspace.fab("untrust-clients").output
