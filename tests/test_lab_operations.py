"""Day-two tasks against the real registry in the lab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from tasks import pki
from tests.conftest import FabResult, Workspace, run_on
from tests.lab import Lab

pytestmark = pytest.mark.lab


def served_fingerprint(lab: Lab, address: str) -> str:
    result = run_on(
        lab,
        "client1",
        f"echo | openssl s_client -connect {address}:5000 2>/dev/null "
        "| openssl x509 -noout -fingerprint -sha256",
    )
    return result.stdout.strip().split("=", 1)[1]


def test_day_two_operations(lab: Lab, workspace: Workspace) -> None:
    address = lab.host("registry").address
    client = lab.host("client1").address
    image = f"{address}:5000/lab/ops:1"
    workspace.write_inventory(
        {"registry": {"address": address}, "clients": [client], "runtimes": ["docker"]}
    )
    setup = workspace.fab(
        "setup-registry", "--image-archive", str(lab.registry_image_archive())
    )
    assert setup.code == 0, setup.output
    assert workspace.fab("trust-clients").code == 0
    lab.build_test_image("client1", image)
    assert run_on(lab, "client1", f"docker push {image}").returncode == 0

    # status: readable, and the same facts as JSON.
    status = workspace.fab("status")
    assert status.code == 0, status.output
    assert "registry (running)" in status.output
    assert "TLS           ok (HTTP 200 on /v2/)" in status.output
    ca = x509.load_pem_x509_certificate((workspace.folder / "pki/ca.crt").read_bytes())
    assert pki.fingerprint(ca) in status.output
    facts = json.loads(workspace.fab("status", "--json").stdout)
    assert facts["state"] == "running" and facts["managed"] is True
    assert facts["repositories"] >= 1  # earlier tests may have pushed more
    assert facts["certificate_addresses"] == [address]
    assert 390 < facts["certificate_days_left"] <= 397
    assert facts["version"]

    # check-expiry: fine at 30 days, failing (exit 1) when asked for more than 397.
    expiry = workspace.fab("check-expiry")
    assert expiry.code == 0, expiry.output
    assert f"served by {address}:5000: ok" in expiry.output
    soon = workspace.fab("check-expiry", "--days", "400")
    assert soon.code == 1
    assert "EXPIRES SOON" in soon.output and "rotate-cert" in soon.output
    # For cron: silent while all is well, the dates when not.
    assert workspace.fab("check-expiry", "--quiet") == FabResult(0, "", "")
    loud = workspace.fab("check-expiry", "--quiet", "--days", "400")
    assert loud.code == 1 and "EXPIRES SOON" in loud.output

    # rotate-cert: a new certificate is served; the client keeps pulling untouched.
    before = served_fingerprint(lab, address)
    rotated = workspace.fab("rotate-cert")
    assert rotated.code == 0, rotated.output
    assert "issued a new server certificate (asked to)" in rotated.output
    after = served_fingerprint(lab, address)
    assert after != before
    assert (
        run_on(lab, "client1", f"docker rmi {image} && docker pull {image}").returncode
        == 0
    )

    restarted = workspace.fab("restart")
    assert restarted.code == 0, restarted.output
    assert "serves TLS again" in restarted.output
    assert "lab/ops" in workspace.fab("logs", "--lines", "500").output

    # teardown keeps the data; setup-registry brings the same images back.
    down = workspace.fab("teardown")
    assert down.code == 0, down.output
    assert "removed container" in down.output and "kept the data" in down.output
    assert "recap: 1 host: 1 unchanged" in workspace.fab("teardown").output
    # Scripts and cron hear of a registry that serves nothing.
    stopped = workspace.fab("status")
    assert stopped.code == 1
    assert "no registry container; run setup-registry" in stopped.output
    unchecked = workspace.fab("check-expiry", "--quiet")
    assert unchecked.code == 1
    assert f"served by {address}:5000: not checked (cannot connect" in unchecked.output
    assert "could not check the certificate" in unchecked.output
    # A day-two change does not bring back what teardown removed.
    server_cert = (workspace.folder / "pki/server.crt").read_bytes()
    revived = workspace.fab("rotate-cert")
    assert revived.code == 1
    assert "no registry container 'registry'; run setup-registry" in revived.output
    assert (workspace.folder / "pki/server.crt").read_bytes() == server_cert
    assert run_on(lab, "client1", f"docker pull {image}").returncode != 0
    assert workspace.fab("setup-registry").code == 0
    assert (
        run_on(lab, "client1", f"docker rmi {image} && docker pull {image}").returncode
        == 0
    )

    # With --purge-data the images go as well.
    purged = workspace.fab("teardown", "--purge-data")
    assert purged.code == 0, purged.output
    assert "removed the data (registry-data): every image" in purged.output
    assert "removed /opt/registry (TLS files and users)" in purged.output
    assert workspace.fab("setup-registry").code == 0
    gone = run_on(lab, "client1", f"docker rmi {image} && docker pull {image}")
    assert gone.returncode != 0
    assert workspace.fab("untrust-clients").code == 0


def test_extra_address_is_served_and_a_dropped_one_is_named(
    lab: Lab, workspace: Workspace, tmp_path: Path
) -> None:
    registry = lab.host("registry")
    client = lab.host("client1").address
    # A second address on the registry host, as a private IP beside a public one.
    extra = registry.address.rsplit(".", 1)[0] + ".200"
    added = run_on(lab, "registry", f"ip addr add {extra}/24 dev eth0")
    assert added.returncode == 0, added.stderr
    workspace.write_inventory(
        {
            "registry": {"address": registry.address},
            "clients": [client],
            "runtimes": ["docker"],
        }
    )
    # Clients that name the registry by its extra address: no inventory, our pki/.
    by_extra = Workspace(lab, tmp_path / "by-extra")
    by_extra.folder.mkdir()
    pki_dir = str(workspace.folder / "pki")
    image = "lab/extra:1"
    try:
        setup = workspace.fab(
            "setup-registry",
            "--image-archive", str(lab.registry_image_archive()),
            "--extra-address", extra,
            "--replace-ca",  # the module's registry host has another test's CA
        )  # fmt: skip
        assert setup.code == 0, setup.output
        trust = by_extra.fab(
            "-H", client, "trust-clients", "--registry", extra,
            "--runtimes", "docker", "--pki-dir", pki_dir,
        )  # fmt: skip
        assert trust.code == 0, trust.output
        lab.build_test_image("client1", f"{extra}:5000/{image}")
        pushed = run_on(lab, "client1", f"docker push {extra}:5000/{image}")
        assert pushed.returncode == 0, pushed.stderr

        # The same command without the option: the address goes, and is named.
        again = workspace.fab("setup-registry")
        assert again.code == 0, again.output
        assert f"the new certificate leaves out {extra}" in again.output
        assert "registry.extra_addresses" in again.output
        refused = run_on(lab, "client1", f"docker pull {extra}:5000/{image}")
        assert refused.returncode != 0
        assert "x509" in refused.stderr

        # The trust for the address the certificate dropped can still be removed.
        untrust = by_extra.fab(
            "-H", client, "untrust-clients", "--registry", extra,
            "--runtimes", "docker", "--pki-dir", pki_dir,
        )  # fmt: skip
        assert untrust.code == 0, untrust.output
        assert f"removed /etc/docker/certs.d/{extra}:5000/ca.crt" in untrust.output
    finally:
        run_on(lab, "registry", f"ip addr del {extra}/24 dev eth0")


def test_data_in_a_host_folder(lab: Lab, workspace: Workspace) -> None:
    address = lab.host("registry").address
    client = lab.host("client1").address
    image = f"{address}:5000/lab/folder:1"
    workspace.write_inventory(
        {
            "registry": {"address": address, "data": "/srv/registry"},
            "clients": [client],
            "runtimes": ["docker"],
        }
    )
    setup = workspace.fab(
        "setup-registry",
        "--image-archive", str(lab.registry_image_archive()),
        "--replace-ca",  # the module's registry host has another test's CA
    )  # fmt: skip
    assert setup.code == 0, setup.output
    assert workspace.fab("trust-clients").code == 0
    lab.build_test_image("client1", image)
    assert run_on(lab, "client1", f"docker push {image}").returncode == 0
    folder = lab.host("registry").files / "srv/registry"
    assert (folder / "docker/registry/v2/repositories/lab/folder").is_dir()
    assert json.loads(workspace.fab("status", "--json").stdout)["data"] == (
        "/srv/registry"
    )

    # The folder outlives the container, and is gone only when asked.
    down = workspace.fab("teardown")
    assert "kept the data (/srv/registry)" in down.output
    assert workspace.fab("setup-registry").code == 0
    assert run_on(lab, "client1", f"docker rmi {image}").returncode == 0
    assert run_on(lab, "client1", f"docker pull {image}").returncode == 0
    purged = workspace.fab("teardown", "--purge-data")
    assert purged.code == 0, purged.output
    assert "removed the data (/srv/registry): every image" in purged.output
    assert list(folder.iterdir()) == []
    assert workspace.fab("setup-registry").code == 0
    assert run_on(lab, "client1", f"docker rmi {image}").returncode == 0
    assert run_on(lab, "client1", f"docker pull {image}").returncode != 0
    assert workspace.fab("untrust-clients").code == 0


def test_settings_given_once_stay_with_the_registry(
    lab: Lab, workspace: Workspace
) -> None:
    address = lab.host("registry").address
    client = lab.host("client1").address
    image = f"{address}:5000/lab/kept-settings:1"
    workspace.write_inventory(
        {"registry": {"address": address}, "clients": [client], "runtimes": ["docker"]}
    )
    # --data and --remote-dir on the command line only, not in the inventory.
    setup = workspace.fab(
        "setup-registry",
        "--image-archive", str(lab.registry_image_archive()),
        "--data", "/srv/registry", "--remote-dir", "/opt/registry/alt",
        "--replace-ca",  # the module's registry host has another test's CA
    )  # fmt: skip
    assert setup.code == 0, setup.output
    assert workspace.fab("trust-clients").code == 0
    lab.build_test_image("client1", image)
    assert run_on(lab, "client1", f"docker push {image}").returncode == 0

    # Later tasks without those options keep them: the images and the users stay.
    secret = workspace.folder / "password"
    secret.write_text("kept-settings-1\n")
    added = workspace.fab("add-user", "--name", "ci", "--password-file", str(secret))
    assert added.code == 0, added.output
    assert "the data moves" not in added.output
    users = lab.host("registry").files / "opt/registry/alt/auth/htpasswd"
    assert users.read_text().startswith("ci:$2y$")
    rotated = workspace.fab("rotate-cert")
    assert rotated.code == 0, rotated.output
    assert "login required" in rotated.output  # the users file was found
    facts = json.loads(workspace.fab("status", "--json").stdout)
    assert facts["data"] == "/srv/registry"
    plain = workspace.fab("setup-registry")
    assert "recap: 1 host: 1 unchanged" in plain.output, plain.output
    assert (
        workspace.fab(
            "login-clients", "--name", "ci", "--password-file", str(secret)
        ).code
        == 0
    )
    assert run_on(lab, "client1", f"docker rmi {image}").returncode == 0
    assert run_on(lab, "client1", f"docker pull {image}").returncode == 0

    # Even with no container left to ask, pki/ remembers how the registry ran:
    # it comes back with its images and its login, not open and empty.
    assert workspace.fab("teardown").code == 0
    back = workspace.fab("setup-registry")
    assert back.code == 0, back.output
    assert "login required" in back.output
    assert json.loads(workspace.fab("status", "--json").stdout)["data"] == (
        "/srv/registry"
    )
    assert run_on(lab, "client1", f"docker rmi {image}").returncode == 0
    assert run_on(lab, "client1", f"docker pull {image}").returncode == 0

    assert workspace.fab("login-clients", "--logout").code == 0
    assert workspace.fab("untrust-clients").code == 0
    assert workspace.fab("teardown", "--purge-data").code == 0
