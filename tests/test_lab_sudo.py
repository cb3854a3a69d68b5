"""A non-root SSH user: sudo without a password, with one, and without rights."""

from __future__ import annotations

import pwd
import secrets

import pytest

from tests.conftest import Workspace
from tests.lab import Lab

pytestmark = pytest.mark.lab

#: Made for each run, and set inside the hosts only.
PASSWORD = secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def deploy_user(lab: Lab) -> str:
    """A user on every lab host (each in its own /etc/passwd); sudo rights per host."""
    user = lab.ensure_user("deploy")
    for host in lab.hosts:
        host.run("chpasswd", input=f"{user}:{PASSWORD}\n")
    return user


def grant(lab: Lab, name: str, rule: str | None) -> None:
    user = lab.ensure_user("deploy")
    sudoers = lab.host(name).files / "etc/sudoers.d" / user
    if rule is None:
        sudoers.unlink(missing_ok=True)
    else:
        sudoers.write_text(f"{user} ALL=(ALL) {rule}\n")
        sudoers.chmod(0o440)


def test_sudo_users(lab: Lab, workspace: Workspace, deploy_user: str) -> None:
    # useradd and chpasswd wrote the hosts' /etc, not this machine's.
    with pytest.raises(KeyError):
        pwd.getpwnam(deploy_user)
    address = lab.host("registry").address
    assert (
        workspace.fab(
            "-H",
            address,
            "setup-registry",
            "--image-archive",
            str(lab.registry_image_archive()),
        ).code
        == 0
    )
    client1 = lab.host("client1").address
    client2 = lab.host("client2").address
    grant(lab, "client1", "NOPASSWD: ALL")
    grant(lab, "client2", None)
    hosts = f"{deploy_user}@{client1},{deploy_user}@{client2}"

    run = workspace.fab(
        "-H", hosts, "trust-clients", "--registry", address, "--runtimes", "docker"
    )
    assert run.code == 1
    assert f"{deploy_user}@{client1}: changed" in run.output
    assert (
        f"{deploy_user}@{client2}: failed: user {deploy_user} needs a password for sudo"
        in run.output
    )
    assert "--prompt-for-sudo-password" in run.output
    ca = lab.host("client1").files / f"etc/docker/certs.d/{address}:5000/ca.crt"
    assert ca.stat().st_uid == 0  # written as root through sudo

    # With the password Fabric would prompt for (given here through its config).
    grant(lab, "client2", "ALL")
    config = workspace.folder / "sudo.yaml"
    config.write_text(
        lab.fabric_config().read_text() + f"sudo:\n  password: {PASSWORD}\n"
    )
    with_password = workspace.fab(
        "-H", hosts, "trust-clients", "--registry", address,
        "--runtimes", "docker", config=config,
    )  # fmt: skip
    assert with_password.code == 0, with_password.output
    assert "1 changed, 1 unchanged" in with_password.output
    assert PASSWORD not in with_password.output

    # A user whom sudo refuses outright is told so.
    grant(lab, "client2", None)
    refused = workspace.fab(
        "-H", f"{deploy_user}@{client2}", "untrust-clients",
        "--registry", address, "--runtimes", "docker", config=config,
    )  # fmt: skip
    assert refused.code == 1
    assert "sudo" in refused.output and "Traceback" not in refused.output
    grant(lab, "client1", None)
