"""Faults on real hosts: each reported for its host with the fix, the others done,
nothing half-written, and a re-run after the repair converges with nothing lost."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tasks.pki import StateFolder
from tests.conftest import Workspace, run_on
from tests.lab import Lab

pytestmark = pytest.mark.lab


@contextmanager
def port_held(lab: Lab, host: str, port: int) -> Iterator[None]:
    """Another program listening on ``port`` of ``host``, for as long as the block runs."""
    # Wait until the port is really held: python may take a while to start.
    hold = (
        f"python3 -m http.server {port} >/dev/null 2>&1 </dev/null & "
        "echo $! >/run/lab-holder.pid; "
        f"for i in $(seq 300); do ss -Hltn 'sport = :{port}' | grep -q . && exit 0; "
        "sleep 0.1; done; exit 1"
    )
    assert run_on(lab, host, hold).returncode == 0
    try:
        yield
    finally:
        stop = (
            "pid=$(cat /run/lab-holder.pid); kill $pid; "
            "while kill -0 $pid 2>/dev/null; do sleep 0.1; done"
        )
        run_on(lab, host, stop)


@pytest.fixture
def fleet(lab: Lab, workspace: Workspace) -> Iterator[Workspace]:
    """A registry, and an inventory of both clients trusting it through docker."""
    address = lab.host("registry").address
    workspace.write_inventory(
        {
            "registry": {"address": address},
            "clients": [lab.host("client1").address, lab.host("client2").address],
            "runtimes": ["docker"],
        }
    )
    # Each test brings its own CA to the module's registry host: say so.
    setup = workspace.fab(
        "setup-registry",
        "--image-archive", str(lab.registry_image_archive()),
        "--replace-ca",
    )  # fmt: skip
    assert setup.code == 0, setup.output
    yield workspace
    workspace.fab("untrust-clients")


def ca_file(lab: Lab, name: str) -> Path:
    address = lab.host("registry").address
    return lab.host(name).files / f"etc/docker/certs.d/{address}:5000/ca.crt"


def test_stopped_sshd_fails_that_host_only(lab: Lab, fleet: Workspace) -> None:
    lab.stop_sshd("client2")
    try:
        run = fleet.fab("trust-clients")
    finally:
        lab.start_sshd("client2")
    assert run.code == 1
    client2 = lab.host("client2").address
    assert (
        f"{client2}: failed: connection refused on port 22; is sshd running there?"
        in run.output
    )
    assert "recap: 2 hosts: 1 changed, 1 failed" in run.output
    assert "Traceback" not in run.output
    assert ca_file(lab, "client1").exists()

    repaired = fleet.fab("trust-clients")
    assert repaired.code == 0, repaired.output
    assert "recap: 2 hosts: 1 changed, 1 unchanged" in repaired.output


def test_unreachable_address_is_named(lab: Lab, fleet: Workspace) -> None:
    address = lab.host("registry").address
    nobody = address.rsplit(".", 1)[0] + ".250"  # inside the lab's own subnet
    run = fleet.fab("-H", f"{lab.host('client1').address},{nobody}", "trust-clients")
    assert run.code == 1
    assert re.search(
        rf"{re.escape(nobody)}: failed: (no route to host|timed out)", run.output
    )
    assert "1 changed, 1 failed" in run.output


def test_a_firewall_that_drops_ssh_is_a_connect_timeout(
    lab: Lab, fleet: Workspace
) -> None:
    drop = "iptables -I INPUT -p tcp --dport 22 -j DROP"
    assert run_on(lab, "client2", drop).returncode == 0
    config = fleet.folder / "short-timeout.yaml"
    config.write_text(
        lab.fabric_config().read_text().replace("connect: 10", "connect: 2")
    )
    try:
        run = fleet.fab("trust-clients", config=config)
    finally:
        run_on(lab, "client2", drop.replace("-I", "-D"))
    assert run.code == 1
    client2 = lab.host("client2").address
    assert (
        f"{client2}: failed: timed out connecting to port 22; check the address, "
        "the port and any firewall" in run.output
    )
    assert "1 changed, 1 failed" in run.output


def test_changed_host_key_is_refused_with_the_fix(lab: Lab, fleet: Workspace) -> None:
    assert fleet.fab("trust-clients").code == 0
    client1 = lab.host("client1").address
    known = lab.known_hosts.read_text().splitlines()
    other = next(line for line in known if not line.startswith(client1 + " "))
    forged = [
        line
        if not line.startswith(client1 + " ")
        else f"{client1} {other.split(' ', 1)[1]}"
        for line in known
    ]
    lab.known_hosts.write_text("\n".join(forged) + "\n")
    try:
        run = fleet.fab("trust-clients")
        assert run.code == 1
        assert f"{client1}: failed: its SSH host key changed" in run.output
        assert "ssh-keygen -R" in run.output
        assert "1 unchanged, 1 failed" in run.output
    finally:
        lab.known_hosts.write_text("\n".join(known) + "\n")
    assert fleet.fab("trust-clients").code == 0


def test_read_only_disk_leaves_no_half_file(lab: Lab, fleet: Workspace) -> None:
    assert fleet.fab("trust-clients").code == 0
    target = ca_file(lab, "client1")
    before = target.read_bytes()
    fleet.fab("untrust-clients", "--runtimes", "docker")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"an older CA\n")
    # /etc/docker is a folder of the host's /etc: it becomes a mount of its own
    # to be made read-only alone.
    read_only = (
        "mount --bind /etc/docker /etc/docker && mount -o remount,ro,bind /etc/docker"
    )
    assert run_on(lab, "client1", read_only).returncode == 0
    try:
        run = fleet.fab("trust-clients")
    finally:
        assert run_on(lab, "client1", "umount /etc/docker").returncode == 0
    assert run.code == 1
    client1 = lab.host("client1").address
    assert re.search(
        rf"{re.escape(client1)}: failed: could not install the CA: .*Read-only file "
        "system; remount it read-write, then run again",
        run.output,
    )
    assert target.read_bytes() == b"an older CA\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["ca.crt"]
    assert fleet.fab("trust-clients").code == 0
    assert target.read_bytes() == before
    # The older CA was not ours: kept aside, and put back by untrust-clients.
    kept = target.with_name("ca.crt.orig")
    assert kept.read_bytes() == b"an older CA\n"
    assert fleet.fab("untrust-clients", "--runtimes", "docker").code == 0
    assert target.read_bytes() == b"an older CA\n" and not kept.exists()
    target.unlink()  # leave the client as the next test expects it


def test_full_disk_leaves_no_half_file(lab: Lab, fleet: Workspace) -> None:
    folder = f"/etc/docker/certs.d/{lab.host('registry').address}:5000"
    fill = (
        f"mkdir -p '{folder}' && mount -t tmpfs -o size=8k tmpfs '{folder}' && "
        f"echo old > '{folder}/ca.crt' && "
        f"dd if=/dev/zero of='{folder}/filler' bs=1k count=100 2>/dev/null; true"
    )
    assert run_on(lab, "client1", fill).returncode == 0
    try:
        run = fleet.fab("trust-clients")
        listing = run_on(
            lab, "client1", f"ls -A '{folder}'; cat '{folder}/ca.crt'"
        ).stdout
    finally:
        run_on(lab, "client1", f"umount '{folder}'")
    assert run.code == 1
    assert "No space left on device; free some space there, then run again" in (
        run.output
    )
    assert listing.split() == ["ca.crt", "filler", "old"]
    assert fleet.fab("trust-clients").code == 0


def test_stopped_docker_daemon(lab: Lab, fleet: Workspace) -> None:
    lab.stop_dockerd("registry")
    try:
        run = fleet.fab("setup-registry")
        # Day-two tasks must not take a silent daemon for a registry that is gone.
        day_two = {task: fleet.fab(task) for task in ("status", "teardown", "backup")}
    finally:
        lab.start_dockerd("registry")
    assert run.code == 1
    assert "the docker daemon is not reachable" in run.output
    assert "start it" in run.output
    assert "Traceback" not in run.output
    for task, done in day_two.items():
        assert done.code == 1, (task, done.output)
        assert "the docker daemon is not reachable" in done.output, task
        assert "start docker" in done.output and "Traceback" not in done.output
    again = fleet.fab("setup-registry")
    assert again.code == 0, again.output
    assert "running" in fleet.fab("status").output  # teardown removed nothing


def test_port_held_by_another_program(lab: Lab, fleet: Workspace) -> None:
    assert fleet.fab("teardown").code == 0
    with port_held(lab, "registry", 5000):
        run = fleet.fab("setup-registry")
    assert run.code == 1
    assert (
        "port 5000 is already in use by python3; stop it or pick another port"
        in run.output
    )
    assert fleet.fab("setup-registry").code == 0


def test_foreign_container_with_our_name(lab: Lab, fleet: Workspace) -> None:
    assert fleet.fab("teardown").code == 0
    made = run_on(lab, "registry", "docker run -d --name registry registry:2")
    assert made.returncode == 0, made.stderr
    try:
        run = fleet.fab("setup-registry")
        assert run.code == 1
        assert "was not made by this tool" in run.output
        assert "docker rm -f" in run.output
        gone = fleet.fab("teardown")
        assert gone.code == 1 and "was not made by this tool" in gone.output
    finally:
        run_on(lab, "registry", "docker rm -f registry")
    assert fleet.fab("setup-registry").code == 0


def test_two_runs_on_one_state_folder(lab: Lab, fleet: Workspace) -> None:
    assert fleet.fab("teardown").code == 0
    state = StateFolder(fleet.folder / "pki")
    before = state.ca_cert_path.read_bytes()

    # This test process holds the lock, as a first run would for its whole length.
    with state.locked():
        second = fleet.fab("setup-registry")
    assert second.code == 1
    assert "another run is using this state folder" in second.output
    assert "Traceback" not in second.output
    assert state.ca_cert_path.read_bytes() == before

    # Once the first run is done, the same command goes through.
    again = fleet.fab("setup-registry")
    assert again.code == 0, again.output
    assert state.ca_cert_path.read_bytes() == before


def test_bad_input_touches_no_host(lab: Lab, fleet: Workspace) -> None:
    inventory = fleet.folder / "inventory.yaml"
    good = inventory.read_text()
    inventory.write_text(good.replace("runtimes:", "runtime:"))
    run = fleet.fab("trust-clients")
    assert run.code == 1
    assert run.output.strip().splitlines() == [
        "error: inventory.yaml: unknown key runtime (did you mean 'runtimes'?); "
        "known keys: registry, clients, runtimes, rootless_users"
    ]
    assert not ca_file(lab, "client1").exists()
    inventory.write_text(good)


def test_another_registrys_state_folder_is_refused(
    lab: Lab, fleet: Workspace, tmp_path: Path
) -> None:
    assert fleet.fab("trust-clients").code == 0
    trusted = ca_file(lab, "client1").read_bytes()
    client = lab.host("client1").address
    registry = lab.host("registry").address
    # A folder without inventory: -H and --registry say it all.
    bare = Workspace(lab, tmp_path / "bare")
    bare.folder.mkdir()
    ours = str(fleet.folder / "pki")

    # A mistyped registry address: this folder's CA cannot vouch for it.
    typo = bare.fab(
        "-H", client, "trust-clients", "--registry", client, "--pki-dir", ours
    )
    assert typo.code == 1
    assert f"not {client} (--registry); pass --pki-dir" in typo.output

    # The state folder of another registry: its CA would replace a working one.
    stranger = bare.folder / "pki"
    StateFolder(stranger).ensure_ca(["203.0.113.9"])  # made, never contacted
    wrong = bare.fab("-H", client, "trust-clients", "--registry", registry)
    assert wrong.code == 1 and "ca.crt: this CA may only sign for" in wrong.output
    assert ca_file(lab, "client1").read_bytes() == trusted


def test_broken_config_on_one_client_fails_that_client_only(
    lab: Lab, fleet: Workspace
) -> None:
    broken = lab.host("client2").files / "etc/buildkit/buildkitd.toml"
    broken.write_text("registry = 5\n")
    try:
        run = fleet.fab("trust-clients", "--runtimes", "buildkit")
    finally:
        text = broken.read_text()
        broken.unlink()
    assert run.code == 1
    assert "Traceback" not in run.output
    client2 = f"] {lab.host('client2').address}: "
    (line,) = [x for x in run.output.splitlines() if client2 in x]
    assert ": failed: runtimes: buildkit;" in line
    assert "/etc/buildkit/buildkitd.toml: its registry is not a table" in line
    assert f"{lab.host('client1').address}: changed" in run.output
    assert "recap: 2 hosts: 1 changed, 1 failed" in run.output
    assert text == "registry = 5\n"  # left for its owner to fix
    fleet.fab("untrust-clients", "--runtimes", "buildkit")


def test_ca_key_never_leaves_this_machine(lab: Lab, fleet: Workspace) -> None:
    assert fleet.fab("trust-clients").code == 0
    key = (fleet.folder / "pki/ca.key").read_text()
    # Past the ASN.1 header every P-256 PKCS#8 key shares: the secret itself.
    secret = "".join(key.splitlines()[1:-1])[48:96].encode()
    for host in lab.hosts:
        for path in host.files.rglob("*"):
            if path.is_file() and path.stat().st_size < 1_000_000:
                data = path.read_bytes()
                assert secret not in data, f"{host.name}: {path}"
    server_key = lab.host("registry").files / "opt/registry/certs/registry.key"
    assert oct(server_key.stat().st_mode & 0o777) == "0o600"
    assert server_key.stat().st_uid == 0


def test_registry_of_another_ca_is_not_replaced_silently(
    lab: Lab, fleet: Workspace, tmp_path: Path
) -> None:
    assert fleet.fab("trust-clients").code == 0
    stranger = Workspace(lab, tmp_path / "elsewhere")
    stranger.folder.mkdir()
    run = stranger.fab("-H", lab.host("registry").address, "setup-registry")
    assert run.code == 1
    assert "its registry was set up with another CA" in run.output
    assert "--replace-ca" in run.output
    assert not (
        stranger.folder / "pki" / "ca.crt"
    ).exists()  # refused before making one
    pulled = run_on(
        lab, "client1", f"docker pull {lab.host('registry').address}:5000/none:1"
    )
    assert "x509" not in pulled.stderr  # the clients' trust still matches the registry
    assert fleet.fab("setup-registry").code == 0


def test_new_port_taken_keeps_the_running_registry(lab: Lab, fleet: Workspace) -> None:
    with port_held(lab, "registry", 5001):
        run = fleet.fab("setup-registry", "--port", "5001")
    assert run.code == 1
    assert "port 5001 is already in use by python3" in run.output
    status = fleet.fab("status")
    assert "registry (running)" in status.output
    assert "ok (HTTP 200" in status.output


def test_strict_host_keys_refuse_an_unknown_host(lab: Lab, fleet: Workspace) -> None:
    config = fleet.folder / "strict.yaml"
    empty = fleet.folder / "known_hosts"
    empty.write_text("")
    text = lab.fabric_config().read_text()
    text = re.sub(r"known_hosts: .*", f'known_hosts: "{empty}"', text)
    config.write_text(text + "  strict_host_keys: true\n")
    run = fleet.fab("trust-clients", config=config)
    assert run.code == 1
    assert (
        "its SSH host key is unknown and strict host key checking is on" in run.output
    )
    assert "recap: 2 hosts: 2 failed" in run.output
    assert empty.read_text() == ""


def test_debug_output_holds_no_key_material(lab: Lab, fleet: Workspace) -> None:
    run = fleet.fab("--debug", "setup-registry", "--server-days", "300")
    assert run.code == 0, run.output
    assert "running registry apply" in run.output  # debug lines are there
    for name in ("pki/ca.key", "pki/server.key"):
        body = "".join((fleet.folder / name).read_text().splitlines()[1:-1])
        assert body[48:96] not in run.output.replace("\n", "")
