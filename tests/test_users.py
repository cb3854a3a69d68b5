"""htpasswd made here with bcrypt, the only scheme the registry accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.errors import InputError
from tasks.users import (
    _apply_change,
    check_user_name,
    hash_password,
    parse_htpasswd,
    password_matches,
    read_password,
    render_htpasswd,
)


def test_hashes_are_bcrypt_and_verify() -> None:
    # C08: only $2y$/$2b$ lines; the registry rejects $apr1$ (MD5).
    hashed = hash_password("correct horse")
    assert hashed.startswith("$2y$10$")
    assert password_matches("correct horse", hashed)
    assert not password_matches("wrong horse", hashed)


def test_md5_lines_are_refused_with_the_fix() -> None:
    with pytest.raises(InputError, match=r"line 2: user 'bob' has a non-bcrypt hash"):
        parse_htpasswd("alice:$2y$10$abc\nbob:$apr1$xyz$abc\n", "h: htpasswd")


def test_round_trip_sorted() -> None:
    users = {"bob": "$2y$10$b", "alice": "$2b$10$a"}
    text = render_htpasswd(users)
    assert text == "alice:$2b$10$a\nbob:$2y$10$b\n"
    assert parse_htpasswd(text, "x") == users


def test_apply_change_adds_keeps_and_removes() -> None:
    users: dict[str, str] = {}
    assert _apply_change(users, "alice", "password1") == "added user alice"
    first = users["alice"]
    assert (
        _apply_change(users, "alice", "password1") is None
    )  # same password: no change
    assert users["alice"] == first
    assert (
        _apply_change(users, "alice", "password2")
        == "set a new password for user alice"
    )
    assert _apply_change(users, "alice", None) == "removed user alice"
    assert _apply_change(users, "alice", None) is None
    assert users == {}


@pytest.mark.parametrize(
    "name", ["", "a:b", "with space", "-dash", "x" * 65, "carol\n", "\ncarol", "café"]
)
def test_bad_user_names(name: str) -> None:
    with pytest.raises(InputError, match="--name"):
        check_user_name(name)


def test_password_file_first_line(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("long enough password\nignored\n")
    assert read_password(str(secret), "alice") == "long enough password"
    secret.write_text("short\n")
    with pytest.raises(InputError, match="shorter than 8"):
        read_password(str(secret), "alice")
    with pytest.raises(InputError, match="cannot read it"):
        read_password(str(tmp_path / "missing"), "alice")


def test_a_password_file_that_is_a_device_is_refused() -> None:
    with pytest.raises(InputError, match="--password-file /dev/zero: not a regular"):
        read_password("/dev/zero", "ci")
