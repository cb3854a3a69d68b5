"""The registry host's plan: settings, probe parsing, the exact docker run command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import pki
from tasks.errors import HostError, InputError, StateError
from tasks.inventory import RegistrySettings, parse_inventory
from tasks.pki import StateFolder
from tasks.registry import (
    MANAGED_LABEL,
    SPEC_LABEL,
    ContainerPlan,
    Probe,
    RegistrySpec,
    adopt_live,
    check_docker,
    check_port_free,
    data_moved,
    live_settings,
    parse_probe,
    plan_container,
    public_addresses,
    render_apply,
    resolve_spec,
    run_arguments,
    saved_settings,
    spec_hash,
    warn_expiry_of,
)

SPEC = RegistrySpec(
    address="203.0.113.10",
    port=5000,
    extra_addresses=("10.0.0.10",),
    image="registry:2",
    data="registry-data",
    remote_dir="/opt/registry",
    container="registry",
)


def probe(**changes: object) -> Probe:
    values: dict[str, object] = dict(
        docker_path="/usr/bin/docker",
        daemon_version="20.10.24",
        daemon_error=None,
        container=None,
        image_id="sha256:abc",
        listeners=[],
    )
    values.update(changes)
    return Probe(**values)  # type: ignore[arg-type]


def container(
    labels: dict[str, str], running: bool = True, port: int = 5000
) -> dict[str, object]:
    return {
        "Config": {"Labels": labels},
        "State": {"Running": running},
        "HostConfig": {"PortBindings": {"5000/tcp": [{"HostPort": str(port)}]}},
    }


def test_address_defaults_to_the_ssh_host() -> None:
    spec = resolve_spec(RegistrySettings(), None, ssh_host="203.0.113.10")
    assert spec.address == "203.0.113.10"
    assert spec.port == 5000
    assert spec.authority == "203.0.113.10:5000"
    assert spec.cert_path == "/opt/registry/certs/registry.crt"


def test_inventory_values_and_options_combine() -> None:
    book = parse_inventory(
        "registry: {address: 203.0.113.10, port: 5001, extra_addresses: [10.0.0.10]}\n",
        Path("inv.yaml"),
    )
    spec = resolve_spec(book.registry, book, ssh_host="root@x", image="registry:2.8")
    assert (spec.address, spec.port, spec.image) == (
        "203.0.113.10",
        5001,
        "registry:2.8",
    )
    assert spec.addresses == ["203.0.113.10", "10.0.0.10"]


def test_option_contradicting_inventory_is_refused() -> None:
    book = parse_inventory(
        "registry: {address: 203.0.113.10, port: 5001}\n", Path("i.yaml")
    )
    with pytest.raises(
        InputError, match=r"--port 5002 contradicts registry.port: 5001 in i.yaml"
    ):
        resolve_spec(book.registry, book, ssh_host=None, port=5002)


def test_no_address_anywhere() -> None:
    with pytest.raises(InputError, match="no registry address"):
        resolve_spec(RegistrySettings(), None, ssh_host=None)


def test_run_arguments_carry_tls_restart_and_data() -> None:
    arguments = run_arguments(SPEC, "h1")
    joined = " ".join(arguments)
    assert "--restart=always" in arguments
    assert "--publish 5000:5000" in joined
    assert "--volume registry-data:/var/lib/registry" in joined
    assert "--volume /opt/registry/certs:/certs:ro" in joined
    assert "REGISTRY_HTTP_TLS_CERTIFICATE=/certs/registry.crt" in joined
    assert "REGISTRY_HTTP_TLS_KEY=/certs/registry.key" in joined
    assert f"{MANAGED_LABEL}=true" in joined and f"{SPEC_LABEL}=h1" in joined
    assert arguments[-1] == "registry:2"


def test_spec_hash_follows_certificate_and_settings() -> None:
    base = spec_hash(SPEC, "sha256:abc", ["d1", "d2"])
    assert base == spec_hash(SPEC, "sha256:abc", ["d2", "d1"])
    assert base != spec_hash(SPEC, "sha256:abc", ["d1", "d3"])
    assert base != spec_hash(SPEC, "sha256:def", ["d1", "d2"])
    moved = RegistrySpec(**{**SPEC.__dict__, "port": 5001})
    assert base != spec_hash(moved, "sha256:abc", ["d1", "d2"])


@pytest.mark.parametrize(
    ("found", "action"),
    [
        (None, "create"),
        (container({MANAGED_LABEL: "true", SPEC_LABEL: "want"}), "keep"),
        (
            container({MANAGED_LABEL: "true", SPEC_LABEL: "want"}, running=False),
            "start",
        ),
        (container({MANAGED_LABEL: "true", SPEC_LABEL: "old"}), "recreate"),
    ],
)
def test_plan_container(found: dict[str, object] | None, action: str) -> None:
    assert plan_container(SPEC, probe(container=found), "want", "h").action == action


def test_foreign_container_with_our_name_is_refused() -> None:
    with pytest.raises(HostError, match="was not made by this tool"):
        plan_container(SPEC, probe(container=container({})), "want", "root@h")


def test_checks_name_missing_docker_and_stopped_daemon() -> None:
    with pytest.raises(HostError, match="docker is not installed"):
        check_docker(probe(docker_path=None), "h")
    with pytest.raises(HostError, match=r"daemon is not reachable \(Cannot connect"):
        check_docker(
            probe(
                daemon_version=None, daemon_error="Cannot connect to the Docker daemon"
            ),
            "h",
        )


def test_busy_port_names_the_program_unless_it_is_our_registry() -> None:
    busy = ['LISTEN 0 5 0.0.0.0:5000 0.0.0.0:* users:(("python3",pid=7,fd=3))']
    with pytest.raises(HostError, match="port 5000 is already in use by python3"):
        check_port_free(SPEC, probe(listeners=busy), "h")
    ours = container({MANAGED_LABEL: "true", SPEC_LABEL: "x"})
    check_port_free(SPEC, probe(listeners=busy, container=ours), "h")
    # Ours on another port does not excuse a stranger on this one.
    elsewhere = container({MANAGED_LABEL: "true", SPEC_LABEL: "x"}, port=5001)
    with pytest.raises(HostError, match="already in use by python3"):
        check_port_free(SPEC, probe(listeners=busy, container=elsewhere), "h")


def test_parse_probe() -> None:
    inspect = json.dumps([container({MANAGED_LABEL: "true"})])
    output = (
        "@@docker\n/usr/bin/docker\n@@daemon\n0\n20.10.24\n@@container\n"
        f"{inspect}\n@@image\nsha256:abc\n@@listeners\n@@files\n"
        "aaa  /opt/registry/certs/registry.crt\n@@end\n"
    )
    found = parse_probe(output)
    assert found.docker_path == "/usr/bin/docker"
    assert found.daemon_version == "20.10.24"
    assert found.container is not None
    assert found.image_id == "sha256:abc"
    assert found.listeners == []
    assert found.file_digests == {"/opt/registry/certs/registry.crt": "aaa"}


def test_parse_probe_without_docker() -> None:
    output = (
        "@@docker\nmissing\n@@daemon\n127\nsh: docker: not found\n@@container\n"
        "@@image\n@@listeners\nunknown\n@@files\n@@end\n"
    )
    found = parse_probe(output)
    assert found.docker_path is None
    assert found.daemon_version is None
    assert found.daemon_error == "sh: docker: not found"
    assert found.listeners is None


def test_apply_script_recreates_with_a_way_back() -> None:
    script = render_apply(
        SPEC,
        "FILES\n",
        ContainerPlan("recreate", ""),
        ["docker", "run", "x"],
        pull=False,
    )
    lines = [line.strip() for line in script.splitlines()]
    assert lines[0] == "FILES"
    step_aside = lines.index("docker rename registry registry-previous || exit 1")
    run = lines.index("if timeout 120 docker run x >/dev/null; then")
    back = lines.index(
        "docker rename registry-previous registry && docker start registry >/dev/null"
    )
    assert step_aside < run < back


def test_public_addresses_are_flagged() -> None:
    public = RegistrySpec(**{**SPEC.__dict__, "address": "8.8.8.8"})
    assert public_addresses(public) == ["8.8.8.8"]
    assert public_addresses(SPEC) == []  # documentation and private ranges


def test_every_task_warns_of_a_certificate_near_its_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = StateFolder(tmp_path / "pki")
    ca = state.ensure_ca([SPEC.address])
    server = state.ensure_server_cert(ca, [SPEC.address], days=10)
    with caplog.at_level("WARNING", logger="tasks"):
        warn_expiry_of(state)
    ends = f"{server.cert.not_valid_after_utc:%Y-%m-%d}"
    assert [record.getMessage() for record in caplog.records] == [
        f"warning: the server certificate ({state.server_cert_path}) expires in "
        f"{pki.days_left(server.cert)} days, on {ends}; renew it: fab rotate-cert"
    ]


def test_no_warning_without_a_state_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="tasks"):
        warn_expiry_of(StateFolder(tmp_path / "nothing"))
    assert caplog.records == []


@pytest.mark.parametrize(
    ("data", "remote_dir"),
    [
        ("/opt/registry", "/opt/registry"),
        ("/opt/registry/certs", "/opt/registry"),
        ("/srv/registry", "/srv/registry/tls"),
    ],
)
def test_data_and_remote_dir_must_not_hold_each_other(
    data: str, remote_dir: str
) -> None:
    with pytest.raises(InputError, match="overlap"):
        resolve_spec(
            RegistrySettings(),
            None,
            ssh_host="10.0.0.5",
            data=data,
            remote_dir=remote_dir,
        )


def test_data_beside_remote_dir_is_fine() -> None:
    spec = resolve_spec(
        RegistrySettings(),
        None,
        ssh_host="10.0.0.5",
        data="/opt/registry-data",
        remote_dir="/opt/registry",
    )
    assert spec.data == "/opt/registry-data"


def container_running(**changes: object) -> dict[str, object]:
    container: dict[str, object] = {
        "Config": {"Image": "registry:2", "Labels": {MANAGED_LABEL: "true"}},
        "HostConfig": {"PortBindings": {"5000/tcp": [{"HostPort": "5443"}]}},
        "Mounts": [
            {"Type": "bind", "Source": "/srv/registry",
             "Destination": "/var/lib/registry"},
            {"Type": "bind", "Source": "/opt/alt/certs", "Destination": "/certs"},
        ],
    }  # fmt: skip
    container.update(changes)
    return container


def test_live_settings_read_from_our_container() -> None:
    assert live_settings(container_running()) == {
        "image": "registry:2",
        "port": 5443,
        "data": "/srv/registry",
        "remote_dir": "/opt/alt",
    }
    foreign = container_running(Config={"Image": "registry:2", "Labels": {}})
    assert live_settings(foreign) == {}
    assert live_settings(None) == {}


def test_defaults_yield_to_the_running_registry_given_settings_do_not() -> None:
    defaults = resolve_spec(RegistrySettings(), None, ssh_host="10.0.0.5")
    adopted, notes = adopt_live(defaults, container_running(), keep_given=True)
    assert (adopted.port, adopted.data, adopted.remote_dir) == (
        5443,
        "/srv/registry",
        "/opt/alt",
    )
    assert len(notes) == 3 and "registry.data in the inventory" in notes[1]

    given = resolve_spec(
        RegistrySettings(), None, ssh_host="10.0.0.5", data="/srv/new", port=5000
    )
    moved, notes = adopt_live(given, container_running(), keep_given=True)
    assert (moved.port, moved.data, moved.remote_dir) == (5000, "/srv/new", "/opt/alt")
    # A task that only reads acts on the registry as it runs, whatever is given.
    read, _ = adopt_live(given, container_running(), keep_given=False)
    assert (read.port, read.data) == (5443, "/srv/registry")


def test_saved_settings_stand_between_the_inventory_and_the_defaults() -> None:
    saved = {"address": "10.0.0.5", "port": 5443, "data": "/srv/registry"}
    spec = resolve_spec(RegistrySettings(), None, ssh_host="10.0.0.5", saved=saved)
    assert (spec.port, spec.data, spec.image) == (5443, "/srv/registry", "registry:2")
    assert {"port", "data"} <= spec.given
    # An option still wins; a folder saved for another address counts for nothing.
    moved = resolve_spec(
        RegistrySettings(), None, ssh_host="10.0.0.5", data="/srv/new", saved=saved
    )
    assert moved.data == "/srv/new"
    other = resolve_spec(RegistrySettings(), None, ssh_host="10.0.0.6", saved=saved)
    assert other.port == 5000


def test_a_damaged_settings_file_is_one_line(tmp_path: Path) -> None:
    state = StateFolder(tmp_path / "pki")
    state.path.mkdir()
    state.settings_path.write_text('{"address": "10.0.0.5", "port": "many"}')
    with pytest.raises(InputError, match=r"registry.json: port"):
        saved_settings(state)
    state.settings_path.write_text("not json")
    with pytest.raises(StateError, match=r"registry.json: cannot read it"):
        saved_settings(state)


def test_a_data_move_is_named() -> None:
    spec = resolve_spec(RegistrySettings(), None, ssh_host="10.0.0.5")
    assert data_moved(container_running(), spec) == (
        "note: the data moves from /srv/registry to registry-data; the images in "
        "/srv/registry stay there (set data back to serve them)"
    )
    kept = resolve_spec(
        RegistrySettings(), None, ssh_host="10.0.0.5", data="/srv/registry"
    )
    assert data_moved(container_running(), kept) is None
    assert data_moved(None, spec) is None
