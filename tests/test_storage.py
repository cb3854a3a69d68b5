"""Backup archives: what restore accepts before anything is uploaded."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from tasks.errors import InputError
from tasks.storage import check_backup_archive, gc_result, restored_already


def make_archive(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            content = b"x" * member.size if member.isfile() else None
            archive.addfile(member, io.BytesIO(content) if content else None)
    return path


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, target: str = ""
) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = target
    member.size = 1 if kind == tarfile.REGTYPE else 0
    return member


def test_a_backup_made_the_way_backup_makes_it_is_accepted(tmp_path: Path) -> None:
    root = tmp_path / "root" / "docker" / "registry" / "v2"
    root.mkdir(parents=True)
    (root / "blob").write_text("x")
    (tmp_path / "remote" / "auth").mkdir(parents=True)
    (tmp_path / "remote" / "auth" / "htpasswd").write_text("alice:$2y$...\n")
    archive = tmp_path / "backup.tar.gz"
    subprocess.run(
        ["tar", "--create", "--gzip", "--file", str(archive),
         "-C", str(tmp_path / "root"), "--transform", r"s,^\./,data/,", ".",
         "-C", str(tmp_path / "remote"), "auth"],
        check=True,
    )  # fmt: skip
    check_backup_archive(archive)


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        # The field's ways of leading an unpack astray.
        (
            [entry("data/docker/x"), entry("auth", tarfile.SYMTYPE, "/etc")],
            "auth is a link or a special file",
        ),
        (
            [entry("data", tarfile.SYMTYPE, "/tmp/victim")],
            "data is a link or a special file",
        ),
        (
            [entry("data/docker", tarfile.SYMTYPE, "/etc")],
            "data/docker is a link or a special file",
        ),
        (
            [
                entry("data/docker/x"),
                entry("auth/htpasswd", tarfile.SYMTYPE, "/etc/shadow"),
            ],
            "auth/htpasswd is a link or a special file",
        ),
        (
            [entry("data/docker/x"), entry("data/y", tarfile.LNKTYPE, "/etc/passwd")],
            "data/y is a link or a special file",
        ),
        (
            [entry("data/docker/x"), entry("data/dev", tarfile.CHRTYPE)],
            "data/dev is a link or a special file",
        ),
        ([entry("data/../../etc/cron.d/x")], "lies outside the archive"),
        ([entry("/etc/passwd")], "lies outside the archive"),
        (
            [entry("data/docker/x"), entry("etc/passwd")],
            "etc/passwd is neither registry data nor users",
        ),
        (
            [entry("data/docker/x"), entry("auth/sub/file")],
            "auth/sub/file is neither registry data nor users",
        ),
        ([entry("auth/htpasswd")], "it holds no data/ folder"),
        ([entry("data")], "data is a file where backup puts a folder"),
        ([entry("data/docker")], "data/docker is a file where backup puts a folder"),
        (
            [entry("data/docker/x"), entry("auth")],
            "auth is a file where backup puts a folder",
        ),
        ([entry("data/" + "x" * 300)], "has a name too long for a file system"),
        ([entry("data/" + "d/" * 2100 + "x")], "has a name too long for a file system"),
        (
            [entry("data/docker/x"), entry("evil\nname")],
            "'evil\\nname' is neither registry data nor users",
        ),
    ],
)
def test_archives_that_backup_never_makes_are_refused(
    tmp_path: Path, members: list[tarfile.TarInfo], reason: str
) -> None:
    archive = make_archive(tmp_path / "hostile.tar.gz", members)
    with pytest.raises(InputError) as caught:
        check_backup_archive(archive)
    message = str(caught.value)
    assert reason in message
    assert message.startswith(f"--archive {archive}: ")
    assert message.endswith("restore only takes a .tar.gz made by fab backup")


def test_a_file_that_is_no_tar_gz_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "bad.tar.gz"
    garbage.write_bytes(b"not an archive at all")
    with pytest.raises(InputError, match=r"cannot read it as a \.tar\.gz"):
        check_backup_archive(garbage)


def test_a_backup_of_an_empty_registry_is_a_backup(tmp_path: Path) -> None:
    empty = tmp_path / "root"
    empty.mkdir()
    for transform in (r"s,^\.$,data,;s,^\./,data/,", r"s,^\./,data/,"):  # new, old
        archive = tmp_path / "empty.tar.gz"
        subprocess.run(
            ["tar", "--create", "--gzip", "--file", str(archive), "-C", str(empty),
             "--transform", transform, "."],
            check=True,
        )  # fmt: skip
        check_backup_archive(archive)


def test_a_second_restore_of_the_same_archive_finds_nothing_to_do() -> None:
    sha = "a" * 64
    assert restored_already(f"{sha} f1 f1\n", sha)
    assert not restored_already(f"{sha} f1 f2\n", sha)  # the data changed since
    assert not restored_already(f"{'b' * 64} f1 f1\n", sha)  # another archive
    assert not restored_already("", sha)  # never restored


def test_gc_result_says_what_went_and_what_would() -> None:
    marked = "summary 12 blobs marked, 3 blobs and 1 manifests eligible for deletion"
    assert gc_result(f"{marked}\ndeleted 3\nfreed 44900\n", dry_run=False) == (
        "changed",
        ["12 blobs marked, 3 blobs and 1 manifests eligible for deletion",
         "deleted 3 blobs, freed 44.9 kB"],
    )  # fmt: skip
    assert gc_result(f"{marked}\ndeleted 3\n", dry_run=True)[0] == "would change"
    idle = "summary 12 blobs marked, 0 blobs and 0 manifests eligible for deletion"
    assert gc_result(f"{idle}\ndeleted 0\nfreed 0\n", dry_run=True)[0] == "unchanged"
    assert gc_result(f"{idle}\ndeleted 0\nfreed 0\n", dry_run=False)[0] == "unchanged"
