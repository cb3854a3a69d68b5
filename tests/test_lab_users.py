"""Registry users in the lab: no login, no push; docker login, then push."""

from __future__ import annotations

import fcntl

import pytest

from tests.conftest import Workspace, run_on
from tests.lab import Lab

pytestmark = pytest.mark.lab


def test_login_required_after_add_user(lab: Lab, workspace: Workspace) -> None:
    address = lab.host("registry").address
    authority = f"{address}:5000"
    image = f"{authority}/lab/private:1"
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
    secret = workspace.folder / "alice.password"
    secret.write_text("s3cret-enough\n")
    users = lab.host("registry").files / "opt/registry/auth/htpasswd"

    # Removing a user nobody added changes nothing, and says so.
    nobody = workspace.fab("remove-user", "--name", "nobody")
    assert nobody.code == 0 and "1 unchanged" in nobody.output, nobody.output
    assert "no users left" not in nobody.output and not users.exists()

    # A check that fails (here: the state folder is busy) leaves the users as they
    # were: nobody is let in or locked out behind the operator's back.
    with (workspace.folder / "pki/.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = workspace.fab(
            "add-user", "--name", "alice", "--password-file", str(secret)
        )
    assert busy.code == 1 and "another run is using this state folder" in busy.output
    assert not users.exists()

    added = workspace.fab("add-user", "--name", "alice", "--password-file", str(secret))
    assert added.code == 0, added.output
    assert "added user alice" in added.output
    assert "login required" in added.output
    assert "s3cret-enough" not in added.output
    line = users.read_text()
    assert line.startswith("alice:$2y$")
    assert oct(users.stat().st_mode & 0o777) == "0o600"

    denied = run_on(lab, "client1", f"docker push {image}")
    assert denied.returncode != 0
    assert "no basic auth credentials" in denied.stderr
    # docker login on the clients, by the tool: a wrong password is refused and
    # named, the right one lets the push through, a second run changes nothing.
    wrong = workspace.folder / "wrong.password"
    wrong.write_text("not-the-password\n")
    refused = workspace.fab(
        "login-clients", "--name", "alice", "--password-file", str(wrong)
    )
    assert refused.code == 1
    assert f"{authority}: the registry refused alice's password" in refused.output
    assert "logging in" not in refused.output  # checked before any client
    login = workspace.fab(
        "login-clients", "--name", "alice", "--password-file", str(secret)
    )
    assert login.code == 0, login.output
    assert f"logged in as alice to {authority}" in login.output
    assert "s3cret-enough" not in login.output
    pushed = run_on(lab, "client1", f"docker push {image}")
    assert pushed.returncode == 0, pushed.stderr
    relogin = workspace.fab(
        "login-clients", "--name", "alice", "--password-file", str(secret)
    )
    assert "logged in already" in relogin.output
    assert "recap: 1 host: 1 unchanged" in relogin.output
    config = lab.host("client1").files / "root/.docker/config.json"
    assert "s3cret-enough" not in config.read_text()  # base64, as docker keeps it

    # A client still holding the old password is not "logged in already" once the
    # password changed: the registry is asked first.
    changed = workspace.folder / "changed.password"
    changed.write_text("s3cret-changed\n")
    assert (
        workspace.fab(
            "add-user", "--name", "alice", "--password-file", str(changed)
        ).code
        == 0
    )
    stale = workspace.fab(
        "login-clients", "--name", "alice", "--password-file", str(secret)
    )
    assert stale.code == 1 and "refused alice's password" in stale.output
    renewed = workspace.fab(
        "login-clients", "--name", "alice", "--password-file", str(changed)
    )
    assert renewed.code == 0 and "logged in as alice" in renewed.output
    # Back to the first password, for what follows.
    assert (
        workspace.fab(
            "add-user", "--name", "alice", "--password-file", str(secret)
        ).code
        == 0
    )
    line = users.read_text()

    again = workspace.fab("add-user", "--name", "alice", "--password-file", str(secret))
    assert "recap: 1 host: 1 unchanged" in again.output
    setup_again = workspace.fab("setup-registry")
    assert "unchanged" in setup_again.output and "login required" in setup_again.output

    # With dockerd down, the host fails its checks before the users file changes.
    lab.stop_dockerd("registry")
    try:
        down = workspace.fab("remove-user", "--name", "alice")
    finally:
        lab.start_dockerd("registry")
    assert down.code == 1 and "docker" in down.output
    assert users.read_text() == line

    removed = workspace.fab("remove-user", "--name", "alice")
    assert removed.code == 0, removed.output
    assert "no users left" in removed.output
    assert "1 unchanged" in workspace.fab("remove-user", "--name", "alice").output
    refused = run_on(lab, "client1", f"docker pull {image}")
    assert refused.returncode != 0

    # Leave the lab's registry as the other tests expect it: open, data kept.
    users.unlink()
    assert workspace.fab("setup-registry").code == 0
    open_registry = workspace.fab(
        "login-clients", "--name", "alice", "--password-file", str(changed)
    )
    assert (
        open_registry.code == 1 and "the registry asks no login" in open_registry.output
    )
    logout = workspace.fab("login-clients", "--logout")
    assert logout.code == 0 and f"logged out of {authority}" in logout.output
    assert "not logged in" in workspace.fab("login-clients", "--logout").output
    assert workspace.fab("untrust-clients").code == 0
