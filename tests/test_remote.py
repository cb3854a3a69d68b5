"""The file script every host runs, executed here by a real POSIX shell."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from fabric import Config

from tasks.errors import InputError, StateError
from tasks.options import command_line_hosts
from tasks.remote import (
    DEFAULT_WORKERS,
    FileReport,
    Fleet,
    KnownHosts,
    RemoteFile,
    fan_out,
    render_put_files,
    render_remove_files,
    script_header,
)


def run_script(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-s"], input=script, capture_output=True, text=True, check=False
    )


def put(
    files: list[RemoteFile], dry_run: bool = False
) -> subprocess.CompletedProcess[str]:
    return run_script(script_header(dry_run) + render_put_files(files))


def test_writes_then_reports_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "certs.d" / "203.0.113.7:5000" / "ca.crt"
    files = [RemoteFile(str(target), b"-----BEGIN CERTIFICATE-----\nabc\n", 0o644)]
    first = put(files)
    assert first.returncode == 0, first.stderr
    assert FileReport.parse(first.stdout).changed == [str(target)]
    assert target.read_bytes() == files[0].content
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    second = put(files)
    assert FileReport.parse(second.stdout).unchanged == [str(target)]
    assert FileReport.parse(second.stdout).changed == []


def test_mode_difference_alone_is_a_change(tmp_path: Path) -> None:
    target = tmp_path / "server.key"
    target.write_bytes(b"secret")
    target.chmod(0o644)
    result = put([RemoteFile(str(target), b"secret", 0o600)])
    assert FileReport.parse(result.stdout).changed == [str(target)]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_binary_and_odd_content_round_trips(tmp_path: Path) -> None:
    content = bytes(range(256)) * 40 + b"\nEOF\n'\"$(reboot)`"
    target = tmp_path / "blob"
    assert put([RemoteFile(str(target), content)]).returncode == 0
    assert target.read_bytes() == content


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "ca.crt"
    result = put([RemoteFile(str(target), b"x")], dry_run=True)
    assert result.stdout.split() == ["would-change", str(target)]
    assert not target.exists()
    assert not target.parent.exists()


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions; the lab covers a read-only disk")
    folder = tmp_path / "locked"
    folder.mkdir()
    target = folder / "ca.crt"
    target.write_bytes(b"old")
    folder.chmod(0o555)
    try:
        result = put([RemoteFile(str(target), b"new")])
    finally:
        folder.chmod(0o755)
    assert result.returncode != 0
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in folder.iterdir()) == ["ca.crt"]


def test_full_disk_leaves_old_file_and_no_temporary(tmp_path: Path) -> None:
    # ulimit -f stops the write part way, as a full disk would.
    target = tmp_path / "ca.crt"
    target.write_bytes(b"old")
    script = (
        "ulimit -f 1\n"
        + script_header(False)
        + render_put_files([RemoteFile(str(target), b"n" * 100_000)])
    )
    result = run_script(script)
    assert result.returncode != 0
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt"]


def test_remove_only_what_still_holds_our_content(tmp_path: Path) -> None:
    ours = RemoteFile(str(tmp_path / "ours" / "ca.crt"), b"ours")
    edited = RemoteFile(str(tmp_path / "edited" / "ca.crt"), b"ours")
    put([ours, edited])
    Path(edited.path).write_bytes(b"someone changed it")
    result = run_script(script_header(False) + render_remove_files([ours, edited]))
    report = FileReport.parse(result.stdout)
    assert report.removed == [ours.path]
    assert report.kept == [edited.path]
    assert not Path(ours.path).parent.exists()  # its empty folder went too
    assert Path(edited.path).read_bytes() == b"someone changed it"
    again = run_script(script_header(False) + render_remove_files([ours]))
    assert again.stdout == ""


def test_the_hosts_own_file_is_kept_aside_and_put_back(tmp_path: Path) -> None:
    target = tmp_path / "certs.d" / "203.0.113.7:5000" / "ca.crt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"the host's own CA\n")
    ours = RemoteFile(str(target), b"our CA\n")
    older = b"our previous CA\n"

    dry = run_script(script_header(True) + render_put_files([ours], [older]))
    assert FileReport.parse(dry.stdout).saved == [f"{target}.orig"]
    assert not Path(f"{target}.orig").exists()

    done = run_script(script_header(False) + render_put_files([ours], [older]))
    assert done.returncode == 0, done.stderr
    assert FileReport.parse(done.stdout).saved == [f"{target}.orig"]
    assert target.read_bytes() == b"our CA\n"
    assert Path(f"{target}.orig").read_bytes() == b"the host's own CA\n"

    # What we wrote before is replaced, not kept aside a second time.
    target.write_bytes(older)
    again = run_script(script_header(False) + render_put_files([ours], [older]))
    assert FileReport.parse(again.stdout).saved == []
    assert FileReport.parse(again.stdout).changed == [str(target)]

    undone = run_script(script_header(False) + render_remove_files([ours]))
    report = FileReport.parse(undone.stdout)
    assert report.removed == [str(target)] and report.restored == [str(target)]
    assert target.read_bytes() == b"the host's own CA\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["ca.crt"]


def test_a_taken_orig_name_stops_before_anything_changes(tmp_path: Path) -> None:
    target = tmp_path / "hosts.toml"
    target.write_bytes(b"mirror config\n")
    Path(f"{target}.orig").write_bytes(b"older mirror config\n")
    result = run_script(
        script_header(False) + render_put_files([RemoteFile(str(target), b"ours")], [])
    )
    assert result.returncode != 0
    assert f"{target}.orig (where we would keep it) is taken" in result.stderr
    assert target.read_bytes() == b"mirror config\n"


def test_files_we_edit_are_not_kept_aside(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(b"version = 2\n")
    edited = RemoteFile(str(config), b"version = 2\n[plugins]\n")
    result = put([edited])
    assert FileReport.parse(result.stdout).changed == [str(config)]
    assert not Path(f"{config}.orig").exists()


@pytest.mark.parametrize(
    ("argv", "hosts"),
    [
        (["-H", "a,b", "trust-clients"], ["a", "b"]),
        (["--hosts=a", "-i", "k", "trust-clients"], ["a"]),
        (["-Hroot@a:22,b", "trust-clients"], ["root@a:22", "b"]),
        (["trust-clients", "--registry", "x"], []),
    ],
)
def test_command_line_hosts(argv: list[str], hosts: list[str]) -> None:
    assert command_line_hosts(argv) == hosts


def test_fan_out_keeps_input_order_and_bounds_workers() -> None:
    import threading
    import time

    running = 0
    peak = 0
    lock = threading.Lock()

    def work(item: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01 * (5 - item % 5))
        with lock:
            running -= 1
        return item * 2

    seen: list[int] = []
    results = fan_out(list(range(20)), work, 4, on_done=lambda d, t, r: seen.append(d))
    assert results == [i * 2 for i in range(20)]
    assert peak <= 4
    assert seen == list(range(1, 21))


def test_fan_out_names_the_hosts_it_still_waits_for() -> None:
    import time

    waited: list[list[str]] = []

    def work(item: str) -> str:
        time.sleep(0.3 if item == "slow" else 0)
        return item

    results = fan_out(
        ["fast", "slow"], work, 2, on_wait=waited.append, wait_seconds=0.1
    )
    assert results == ["fast", "slow"]
    assert waited and all(names == ["slow"] for names in waited)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fleet": {"workers": 0}}, "fleet.workers in the config 0: give a whole"),
        ({"fleet": {"workers": "many"}}, "fleet.workers in the config many"),
        ({"fleet": {"strict_host_keys": "maybe"}}, "fleet.strict_host_keys"),
        ({"timeouts": {"connect": "abc"}}, "timeouts.connect in the config"),
        ({"timeouts": {"connect": 0}}, "expected seconds greater than 0, got 0"),
    ],
)
def test_bad_fleet_settings_get_one_line(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        Fleet.from_config(Config(overrides=overrides))


def test_fleet_settings_default_when_absent() -> None:
    fleet = Fleet.from_config(Config(overrides={"timeouts": {"connect": 2.5}}))
    assert fleet.workers == DEFAULT_WORKERS
    assert fleet.known_hosts.strict is False


def test_known_hosts_must_be_a_small_regular_file(tmp_path: Path) -> None:
    with pytest.raises(
        InputError, match=r"fleet\.known_hosts /dev/zero: not a regular"
    ):
        KnownHosts(Path("/dev/zero"))._load()
    elsewhere = KnownHosts(tmp_path / "no" / "such" / "known_hosts")
    with pytest.raises(StateError, match="cannot use it as known_hosts"):
        elsewhere._load()
    assert not (tmp_path / "no").exists()  # not made: only ~/.ssh is


def test_a_kept_file_comes_back_even_when_ours_is_gone(tmp_path: Path) -> None:
    target = tmp_path / "ca.crt"
    target.write_bytes(b"the host's own\n")
    ours = RemoteFile(str(target), b"ours\n")
    assert (
        run_script(script_header(False) + render_put_files([ours], [])).returncode == 0
    )
    target.unlink()  # someone deleted our file by hand
    undone = run_script(script_header(False) + render_remove_files([ours]))
    assert FileReport.parse(undone.stdout).restored == [str(target)]
    assert target.read_bytes() == b"the host's own\n"


def test_a_kept_file_beside_an_edited_one_is_named(tmp_path: Path) -> None:
    target = tmp_path / "hosts.toml"
    target.write_bytes(b"mirror\n")
    ours = RemoteFile(str(target), b"ours\n")
    assert (
        run_script(script_header(False) + render_put_files([ours], [])).returncode == 0
    )
    target.write_bytes(b"edited by hand\n")
    undone = run_script(script_header(False) + render_remove_files([ours]))
    report = FileReport.parse(undone.stdout)
    assert report.kept == [str(target)]
    assert report.orig_left == [f"{target}.orig"]
    assert target.read_bytes() == b"edited by hand\n"
