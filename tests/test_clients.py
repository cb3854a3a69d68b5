"""Client trust: the trust script (run here by a real shell), its report, the outcome."""

from __future__ import annotations

import base64

import pytest

from tasks.clients import (
    ConfigPlan,
    Registry,
    client_outcome,
    parse_trust,
    plan_configs,
    render_config_writes,
    render_trust,
    render_untrust,
    rootless_files,
    trust_files,
)
from tasks.report import CHANGED, FAILED, UNCHANGED, WOULD_CHANGE

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
REGISTRY = Registry("203.0.113.7", 5000)


@pytest.mark.parametrize(
    ("registry", "runtime", "path"),
    [
        (REGISTRY, "docker", "/etc/docker/certs.d/203.0.113.7:5000/ca.crt"),
        (Registry("2001:db8::5", 5000), "docker", "/etc/docker/certs.d/[2001:db8::5]:5000/ca.crt"),
        (REGISTRY, "podman", "/etc/containers/certs.d/203.0.113.7:5000/ca.crt"),
    ],
)  # fmt: skip
def test_trust_file_folder_is_exactly_address_port(
    registry: Registry, runtime: str, path: str
) -> None:
    # C03: the folder must be ADDRESS:PORT as written in image names.
    (only,) = trust_files(registry, CA, runtime)
    assert only.path == path
    assert only.mode == 0o644
    assert only.content == CA


def test_containerd_gets_its_ca_and_hosts_toml() -> None:
    paths = [item.path for item in trust_files(REGISTRY, CA, "containerd")]
    assert paths == [
        "/etc/containerd/certs.d/203.0.113.7:5000/ca.crt",
        "/etc/containerd/certs.d/203.0.113.7:5000/hosts.toml",  # C06: that exact name
    ]


def test_auto_script_guards_each_runtime_by_detection() -> None:
    script = render_trust(REGISTRY, CA, ["auto"], dry_run=False)
    assert "command -v dockerd" in script
    assert "command -v skopeo" in script
    assert "command -v k3s" in script
    assert "/etc/docker/certs.d/203.0.113.7:5000/ca.crt" in script
    assert "update-ca-certificates" not in script  # the OS store only when asked


def test_explicit_runtimes_write_without_detection() -> None:
    script = render_trust(REGISTRY, CA, ["docker"], dry_run=False)
    assert "command -v" not in script
    assert "/etc/containers" not in script


def test_untrust_removes_only_our_files() -> None:
    script = render_untrust(REGISTRY, CA, ["docker"])
    assert "remove_file /etc/docker/certs.d/203.0.113.7:5000/ca.crt" in script
    assert "rm -rf" not in script


def test_untrust_auto_covers_every_place_trust_may_have_written() -> None:
    script = render_untrust(REGISTRY, CA, ["auto"])
    assert "ip-registry-203.0.113.7_5000.crt" in script
    assert "/etc/buildkit/certs.d/" in script


def test_report_lines() -> None:
    config = base64.b64encode(b"version = 2\n").decode()
    report = parse_trust(
        "runtime docker\nchanged /etc/docker/certs.d/a:5000/ca.crt\n"
        "stray /etc/docker/certs.d/a\nruntime containerd\n"
        f"config containerd 600 {config}\nversion containerd containerd "
        "github.com/containerd/containerd v2.0.2 abc\n"
        "unchanged /etc/containerd/certs.d/a:5000/ca.crt\n"
    )
    assert report.runtimes == ["docker", "containerd"]
    assert report.stray == ["/etc/docker/certs.d/a"]
    assert report.containerd_major == 2
    (found,) = report.configs
    assert (found.runtime, found.mode, found.text) == (
        "containerd",
        0o600,
        "version = 2\n",
    )


def test_missing_config_reads_as_none() -> None:
    report = parse_trust("runtime containerd\nconfig containerd - -\n")
    assert report.configs[0].text is None


def test_plan_configs_keeps_mode_and_collects_errors() -> None:
    good = base64.b64encode(b"version = 2\n").decode()
    bad = base64.b64encode(b"mirrors: [\n").decode()
    report = parse_trust(
        f"runtime containerd\nconfig containerd 600 {good}\nversion containerd 1.6.20\n"
        f"runtime k3s\nconfig k3s 644 {bad}\n"
    )
    plan = plan_configs(report, REGISTRY, remove=False)
    (written,) = plan.files
    assert written.path == "/etc/containerd/config.toml"
    assert written.mode == 0o600
    assert plan.runtimes == ["containerd"]
    assert plan.errors == [
        "k3s: /etc/rancher/k3s/registries.yaml: " + plan.errors[0].split(": ", 2)[2]
    ]
    assert "not valid YAML" in plan.errors[0]


def test_config_writes_restart_only_running_services() -> None:
    report = parse_trust(
        "runtime containerd\nconfig containerd - -\nversion containerd 1.6\n"
    )
    plan = plan_configs(report, REGISTRY, remove=False)
    script = render_config_writes(plan, dry_run=False)
    assert "systemctl is-active --quiet" in script
    assert "for unit in containerd; do" in script
    assert "systemctl" not in render_config_writes(plan, dry_run=True)


def test_outcome_statuses() -> None:
    changed = parse_trust("runtime docker\nchanged /etc/docker/certs.d/a:5000/ca.crt\n")
    outcome = client_outcome("h", changed, ConfigPlan(), [], False, False)
    assert outcome.status == CHANGED
    assert "wrote /etc/docker/certs.d/a:5000/ca.crt" in outcome.details
    assert client_outcome("h", changed, ConfigPlan(), [], False, True).status == (
        WOULD_CHANGE
    )
    same = parse_trust("runtime docker\nunchanged /etc/docker/certs.d/a:5000/ca.crt\n")
    assert client_outcome("h", same, ConfigPlan(), [], False, False).status == UNCHANGED


def test_stray_folder_is_pointed_out() -> None:
    report = parse_trust("runtime docker\nstray /etc/docker/certs.d/a\n")
    outcome = client_outcome("h", report, ConfigPlan(), [], False, False)
    assert any("not read for this registry" in d for d in outcome.details)


def test_nothing_to_trust_is_a_failure_with_the_fix() -> None:
    outcome = client_outcome(
        "h", parse_trust("runtime none\n"), ConfigPlan(), [], False, False
    )
    assert outcome.status == FAILED
    assert "list runtimes for this client" in outcome.details[0]


def test_restart_needed_is_reported() -> None:
    report = parse_trust("runtime containerd\n")
    outcome = client_outcome(
        "h", report, ConfigPlan(), ["restart-needed containerd"], False, False
    )
    assert (
        "containerd is not run by systemd here: restart it to apply" in outcome.details
    )


def test_port_443_also_trusts_the_bare_address() -> None:
    # Images named 203.0.113.7/app (port 443 implied) are looked up without a port.
    registry = Registry("203.0.113.7", 443)
    docker = [item.path for item in trust_files(registry, CA, "docker")]
    assert docker == [
        "/etc/docker/certs.d/203.0.113.7:443/ca.crt",
        "/etc/docker/certs.d/203.0.113.7/ca.crt",
    ]
    containerd = [item.path for item in trust_files(registry, CA, "containerd")]
    assert "/etc/containerd/certs.d/203.0.113.7/hosts.toml" in containerd
    script = render_trust(registry, CA, ["docker"], dry_run=False)
    assert '[ "$d" != /etc/docker/certs.d/203.0.113.7 ]' in script


def test_other_ports_never_write_the_bare_folder() -> None:
    paths = [item.path for item in trust_files(REGISTRY, CA, "podman")]
    assert paths == ["/etc/containers/certs.d/203.0.113.7:5000/ca.crt"]


def test_rootless_docker_ca_goes_to_the_users_config_home() -> None:
    (only,) = rootless_files(REGISTRY, CA)
    assert only.path == "~/.config/docker/certs.d/203.0.113.7:5000/ca.crt"
    on_443 = [item.path for item in rootless_files(Registry("203.0.113.7", 443), CA)]
    assert on_443 == [
        "~/.config/docker/certs.d/203.0.113.7:443/ca.crt",
        "~/.config/docker/certs.d/203.0.113.7/ca.crt",
    ]


def test_rootless_users_are_checked_before_anything_is_written() -> None:
    script = render_trust(REGISTRY, CA, ["docker"], False, rootless_users=["ci"])
    check = script.index('getent passwd "$u"')
    assert check < script.index("\nput_file ")
    # The user's file is written by the user, into their own home.
    assert "runuser -u ci -- /bin/sh -s" in script
    assert '"$HOME"/.config/docker/certs.d/203.0.113.7:5000/ca.crt' in script
    assert "echo 'runtime docker (rootless, ci)'" in script


def test_untrust_skips_users_the_host_does_not_have() -> None:
    script = render_untrust(REGISTRY, CA, ["docker"], rootless_users=["ci"])
    assert "if getent passwd ci >/dev/null; then" in script
    assert 'remove_file "$HOME"/.config/docker/certs.d/203.0.113.7:5000/ca.crt' in (
        script
    )
    assert "no user" not in script  # nothing to remove is not an error
