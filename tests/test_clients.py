"""Client trust: folder names per runtime, the trust script and its report."""

from __future__ import annotations

import pytest

from tasks.clients import (
    Registry,
    parse_trust,
    render_trust,
    render_untrust,
    trust_files,
    trust_outcome,
)
from tasks.report import CHANGED, FAILED, UNCHANGED, WOULD_CHANGE

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("registry", "runtime", "path"),
    [
        (Registry("203.0.113.7", 5000), "docker", "/etc/docker/certs.d/203.0.113.7:5000/ca.crt"),
        (Registry("203.0.113.7", 443), "docker", "/etc/docker/certs.d/203.0.113.7:443/ca.crt"),
        (Registry("2001:db8::5", 5000), "docker", "/etc/docker/certs.d/[2001:db8::5]:5000/ca.crt"),
        (Registry("203.0.113.7", 5000), "podman", "/etc/containers/certs.d/203.0.113.7:5000/ca.crt"),
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


def test_auto_script_guards_each_runtime_by_detection() -> None:
    script = render_trust(Registry("203.0.113.7", 5000), CA, ["auto"], dry_run=False)
    assert "command -v dockerd" in script
    assert "command -v skopeo" in script
    assert "/etc/docker/certs.d/203.0.113.7:5000/ca.crt" in script
    assert "/etc/containers/certs.d/203.0.113.7:5000/ca.crt" in script


def test_explicit_runtimes_write_without_detection() -> None:
    script = render_trust(Registry("203.0.113.7", 5000), CA, ["docker"], dry_run=False)
    assert "command -v" not in script
    assert "/etc/containers" not in script


def test_untrust_removes_only_our_files() -> None:
    script = render_untrust(Registry("203.0.113.7", 5000), CA, ["docker"])
    assert "remove_file /etc/docker/certs.d/203.0.113.7:5000/ca.crt" in script
    assert "rm -rf" not in script


def test_report_lines() -> None:
    report = parse_trust(
        "runtime docker\nchanged /etc/docker/certs.d/a:5000/ca.crt\n"
        "stray /etc/docker/certs.d/a\nruntime podman\n"
        "unchanged /etc/containers/certs.d/a:5000/ca.crt\n"
    )
    assert report.runtimes == ["docker", "podman"]
    assert report.stray == ["/etc/docker/certs.d/a"]
    outcome = trust_outcome("h", report, dry_run=False)
    assert outcome.status == CHANGED
    assert "wrote /etc/docker/certs.d/a:5000/ca.crt" in outcome.details
    assert any("not read for this registry" in d for d in outcome.details)
    assert trust_outcome("h", report, dry_run=True).status == WOULD_CHANGE


def test_nothing_to_trust_is_a_failure_with_the_fix() -> None:
    outcome = trust_outcome("h", parse_trust("runtime none\n"), dry_run=False)
    assert outcome.status == FAILED
    assert "list runtimes for this client" in outcome.details[0]


def test_unchanged_report() -> None:
    report = parse_trust(
        "runtime docker\nunchanged /etc/docker/certs.d/a:5000/ca.crt\n"
    )
    assert trust_outcome("h", report, dry_run=False).status == UNCHANGED
