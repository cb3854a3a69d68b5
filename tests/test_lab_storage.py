"""Garbage collection, backup and restore against the real registry in the lab."""

from __future__ import annotations

import shutil
import stat
import tarfile

import pytest

from tests.conftest import Workspace, run_on
from tests.lab import Lab

pytestmark = pytest.mark.lab


def test_garbage_collect_backup_and_restore(lab: Lab, workspace: Workspace) -> None:
    address = lab.host("registry").address
    image = f"{address}:5000/lab/kept:1"
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

    # The same tag pushed twice leaves the first image's blobs without a tag.
    for _ in range(2):
        lab.build_test_image("client1", image)
        assert run_on(lab, "client1", f"docker push {image}").returncode == 0

    preview = workspace.fab("garbage-collect", "--dry-run", "--delete-untagged")
    assert preview.code == 0, preview.output
    assert "eligible for deletion" in preview.output
    collected = workspace.fab("garbage-collect", "--delete-untagged")
    assert collected.code == 0, collected.output
    assert "freed 0 B" not in collected.output
    pulled = run_on(lab, "client1", f"docker rmi {image} && docker pull {image}")
    assert pulled.returncode == 0, pulled.stderr

    # backup, lose everything, restore: the same image comes back.
    saved = workspace.fab("backup", "--output", "backup.tar.gz")
    assert saved.code == 0, saved.output
    assert "download 100%" in saved.output
    archive = workspace.folder / "backup.tar.gz"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert workspace.fab("teardown", "--purge-data").code == 0
    assert workspace.fab("setup-registry").code == 0
    assert (
        run_on(lab, "client1", f"docker rmi {image} && docker pull {image}").returncode
        != 0
    )

    restored = workspace.fab("restore", "--archive", "backup.tar.gz")
    assert restored.code == 0, restored.output
    assert "serves TLS" in restored.output
    pulled = run_on(lab, "client1", f"docker pull {image}")
    assert pulled.returncode == 0, pulled.stderr

    # The same archive again: the data is as it left it, nothing to do.
    again = workspace.fab("restore", "--archive", "backup.tar.gz")
    assert again.code == 0, again.output
    assert "recap: 1 host: 1 unchanged" in again.output
    assert "upload" not in again.output

    # Once the data changed, a restore keeps what it replaces instead of deleting it.
    lab.build_test_image("client1", f"{address}:5000/lab/later:1")
    assert (
        run_on(lab, "client1", f"docker push {address}:5000/lab/later:1").returncode
        == 0
    )
    replaced = workspace.fab("restore", "--archive", "backup.tar.gz")
    assert "kept " in replaced.output and ".before-restore-" in replaced.output
    assert run_on(lab, "client1", f"docker pull {image}").returncode == 0

    bogus = workspace.folder / "bogus.tar.gz"
    bogus.write_bytes(b"not a tarball")
    refused = workspace.fab("restore", "--archive", "bogus.tar.gz")
    assert refused.code == 1
    assert "cannot read it as a .tar.gz" in refused.output
    assert "upload" not in refused.output  # refused before anything went up

    # An archive whose users folder is a link: it must not move the files it
    # points to (on a real host, /etc).
    victim = lab.host("registry").files / "opt/registry/victim"
    victim.mkdir()
    (victim / "keep.conf").write_text("mine\n")
    hostile = workspace.folder / "hostile.tar.gz"
    with tarfile.open(hostile, "w:gz") as tar:
        folder = tarfile.TarInfo("data/docker")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        link = tarfile.TarInfo("auth")
        link.type = tarfile.SYMTYPE
        link.linkname = "/opt/registry/victim"
        tar.addfile(link)
    refused = workspace.fab("restore", "--archive", str(hostile))
    assert refused.code == 1
    assert "auth is a link or a special file" in refused.output
    assert (victim / "keep.conf").read_text() == "mine\n"
    shutil.rmtree(victim)
    assert run_on(lab, "client1", f"docker pull {image}").returncode == 0

    # A registry with no image yet: its backup restores too.
    assert workspace.fab("teardown", "--purge-data").code == 0
    assert workspace.fab("setup-registry").code == 0
    assert workspace.fab("backup", "--output", "empty.tar.gz").code == 0
    emptied = workspace.fab("restore", "--archive", "empty.tar.gz")
    assert emptied.code == 0, emptied.output
    assert workspace.fab("restore", "--archive", "backup.tar.gz").code == 0
    assert run_on(lab, "client1", f"docker pull {image}").returncode == 0

    # A backup with users, restored into a registry that asks no login: the
    # restored users must guard it at once.
    secret = workspace.folder / "password"
    secret.write_text("restored-secret\n")
    assert (
        workspace.fab("add-user", "--name", "ci", "--password-file", str(secret)).code
        == 0
    )
    assert workspace.fab("backup", "--output", "with-users.tar.gz").code == 0
    users = lab.host("registry").files / "opt/registry/auth/htpasswd"
    users.unlink()
    assert "login required" not in workspace.fab("setup-registry").output
    v2 = (
        "curl -s -o /dev/null -w '%{http_code}' --cacert "
        f"/etc/docker/certs.d/{address}:5000/ca.crt https://{address}:5000/v2/"
    )
    assert run_on(lab, "client1", v2).stdout == "200"
    with_users = workspace.fab("restore", "--archive", "with-users.tar.gz")
    assert with_users.code == 0, with_users.output
    assert "login required" in with_users.output
    assert run_on(lab, "client1", v2).stdout == "401"
    assert "unchanged" in workspace.fab("setup-registry").output

    users.unlink()
    assert workspace.fab("setup-registry").code == 0
    assert workspace.fab("untrust-clients").code == 0
