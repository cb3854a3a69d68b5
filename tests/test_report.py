"""What tasks print: one line per host and per error, whatever the values hold."""

from __future__ import annotations

import pytest
from invoke.exceptions import Exit

from tasks.errors import InputError
from tasks.report import FAILED, Outcome, log_outcome, one_line, recap, user_errors


def test_one_line_shows_control_characters_instead_of_obeying_them() -> None:
    assert one_line("key por\nt\x1b[31mRED\r") == "key por\\nt\\x1b[31mRED"
    assert one_line("plain: café, 10.0.0.1") == "plain: café, 10.0.0.1"


def test_an_error_with_a_newline_still_exits_on_one_line() -> None:
    @user_errors
    def task() -> None:
        raise InputError("inventory.yaml: unknown key a\nb; known keys: registry")

    with pytest.raises(Exit) as caught:
        task()
    assert caught.value.code == 1
    assert caught.value.message == (
        "error: inventory.yaml: unknown key a\\nb; known keys: registry"
    )


def test_host_lines_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="tasks"):
        log_outcome(Outcome("root@10.0.0.2", FAILED, ["mkdir: x\ny", "second"]))
    (record,) = caplog.records
    assert record.getMessage() == "root@10.0.0.2: failed: mkdir: x\\ny; second"


def test_recap_counts_each_status() -> None:
    outcomes = [
        Outcome("a", "changed"),
        Outcome("b", "unchanged"),
        Outcome("c", FAILED),
        Outcome("d", "changed"),
    ]
    assert recap(outcomes) == "4 hosts: 2 changed, 1 unchanged, 1 failed"
    assert recap(outcomes[:1]) == "1 host: 1 changed"
